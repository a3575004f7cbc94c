import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import type { BlockNode } from '../../src/core/block-node.js';
import type { CrashDisk } from './crash-disk.js';
import { run, runOk } from './oracles.js';
import type { Rng } from './workload.js';

/*
 * What the qcow2 crash tests do with each crash image: QEMU judges its metadata, QEMU reads its
 * guest bytes, and the disk's log says which requests a completed guest flush made durable.
 */

/**
 * Cuts the crash image at log event `at` into DIR/crashed.qcow2, asserts `qemu-img check` finds
 * no corruption and no check errors (a dirty lazy-refcounts image is repaired first, as an open
 * would), and returns the guest bytes qemu-img convert reads from it.
 */
export async function crashedGuest(disk: CrashDisk, at: number, rng: Rng, dir: string, what: string): Promise<Uint8Array> {
  const crashed = `${dir}/crashed.qcow2`;
  const raw = `${dir}/crashed.raw`;
  const bytes = disk.crashImage(at, rng);
  await writeFile(crashed, bytes);
  // Incompatible feature bit 0: dirty (lazy refcounts); QEMU rebuilds the refcounts on open.
  if ((new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(72) & 1n) !== 0n) await run('qemu-img', ['check', '-q', '-r', 'all', crashed]);
  const check = await run('qemu-img', ['check', '--output=json', crashed]);
  let report: Record<string, number> = {};
  try {
    report = JSON.parse(check.stdout) as Record<string, number>;
  } catch {
    assert.fail(`${what}: qemu-img check gave no report (exit ${check.code}): ${check.stderr}`);
  }
  assert.equal(report.corruptions ?? 0, 0, `${what}: qemu-img check found corruption: ${check.stdout}`);
  assert.equal(report['check-errors'] ?? 0, 0, `${what}: qemu-img check errors: ${check.stdout}`);
  await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', crashed, raw]);
  const guest = new Uint8Array(await readFile(raw));
  await rm(raw);
  return guest;
}

/**
 * The marks logged up to event `at` (label → event index), and the index before which every
 * acknowledged request is durable: the start of the latest guest flush (marks gf-start:K and
 * gf-end:K) that had ended by `at`; -1 when none had.
 */
export function durability(disk: CrashDisk, at: number): { marks: Map<string, number>; durableBefore: number } {
  const marks = new Map<string, number>();
  for (let i = 0; i <= at; i++) {
    const e = disk.log[i]!;
    if (e.t === 'mark') marks.set(e.label, i);
  }
  let durableBefore = -1;
  for (const label of marks.keys()) {
    if (label.startsWith('gf-end:')) durableBefore = Math.max(durableBefore, marks.get(`gf-start:${label.slice(7)}`)!);
  }
  return { marks, durableBefore };
}

/** A guest flush of `node`, marked on `disk` as durability() reads it: gf-start:K before it, gf-end:K once it returns. */
export async function markedFlush(disk: CrashDisk, node: BlockNode, k: number): Promise<void> {
  disk.mark(`gf-start:${k}`);
  await node.flush();
  disk.mark(`gf-end:${k}`);
}

/** Host offsets of the L2 tables the final image's L1 table names (read off the disk's contents). */
export function l2Tables(disk: CrashDisk): Set<number> {
  const image = disk.contents;
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const l1Size = dv.getUint32(36);
  const l1 = Number(dv.getBigUint64(40));
  const tables = new Set<number>();
  for (let i = 0; i < l1Size; i++) {
    const l2 = Number(dv.getBigUint64(l1 + 8 * i) & 0x00fffffffffffe00n);
    if (l2) tables.add(l2);
  }
  return tables;
}
