/**
 * Crash safety of emptying a qcow2 image by rebuilding it (rebuild-empty.ts, QEMU's
 * make_completely_empty), by simulation: the image lives on a CrashDisk (a disk with a volatile
 * write cache that logs every change and flush), is emptied, and a crash image is cut after
 * every event of the log, each with random subsets of the unflushed changes.
 *
 * The top holds only bytes its backing file holds too (as after a commit), so whatever a crash
 * leaves must read exactly as the backing file (qemu-img compare). A crash image with the dirty
 * bit clear must pass qemu-img check (leaks allowed); one left dirty must be repaired whole —
 * by qemu-img check -r all and by vdisk's own open — and then pass it without even a leak.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { DriverDef } from '../../../../src/registry/driver.js';
import { open, registry, Registry } from '../../../../src/registry/index.js';
import { makeEmpty } from '../../../../src/jobs/make-empty.js';
import { CrashDisk } from '../../../helpers/crash-disk.js';
import { needTools, run, runOk } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { uniformInt } from '../../../helpers/uniform-int.js';
import { Rng } from '../../../helpers/workload.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CLUSTER = 64 * KiB;
/** Crash images cut after each event, each keeping its own random subset of unflushed changes. */
const SUBSETS = 3;

let tmp: TmpDir;
before(async () => (tmp = await makeTmpDir('vdisk-empty-crash-')));
after(() => tmp.cleanup());

function withDisk(disk: CrashDisk): Registry {
  const driver: DriverDef = { name: 'crash-disk', kind: 'protocol', options: ['filename'], open: async () => disk };
  return new Registry([...registry.list(), driver]);
}

interface Config {
  name: string;
  seed: number;
  /** Makes the image (a qcow2 over `base`, holding only the base's bytes) in `dir`. */
  make(dir: string, base: string, image: string): Promise<void>;
  lazyRefcounts?: boolean;
  /** The base's size and the bytes of its pattern (default 8 MiB, 4 MiB). */
  base?: { size: number; pattern: number };
  /**
   * Writes through vdisk before emptying (the base's bytes, as read from it): whole clusters,
   * since the image is opened without its backing file.
   */
  writes?: [number, number][];
}

/** The base: raw, a pattern in the first `pattern` bytes, zeros after. */
async function makeBase(base: string, size: number, pattern: number): Promise<Uint8Array> {
  await runOk('qemu-img', ['create', '-q', '-f', 'raw', base, String(size)]);
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -P 0x3c 0 ${pattern}`, base]);
  return new Uint8Array(await readFile(base));
}

/** qemu-io commands writing what the base holds at [offset, offset + length) (it lies in the pattern). */
const same = (offset: number, length: number) => ['-c', `write -P 0x3c ${offset} ${length}`];

const configs: Config[] = [
  {
    name: 'as qemu-img creates it: the new layout falls where the old one was',
    seed: 0xe3a70001,
    async make(_dir, base, image) {
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', image, '8M']);
      // Data, a zero cluster over the base's zeros, and data in a second L2 table's range.
      await runOk('qemu-io', ['-f', 'qcow2', ...same(0, MiB), ...same(2 * MiB, 3 * CLUSTER), '-c', `write -z ${6 * MiB} ${CLUSTER}`, image]);
    },
  },
  {
    name: 'a grown image: the L1 table moved away, and cluster 3 holds guest data',
    seed: 0xe3a70002,
    // No longer than the image before it grows: the grown range gets no zero clusters.
    base: { size: MiB, pattern: MiB },
    async make(_dir, base, image) {
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', image, '1M']);
      await runOk('qemu-io', ['-f', 'qcow2', ...same(0, 2 * CLUSTER), image]);
      // Growing past one L1 entry's reach moves the L1 table to the end; the next one-cluster
      // data write takes the cluster it leaves, which the rebuild overwrites.
      await runOk('qemu-img', ['resize', '-q', image, '1G']);
      await runOk('qemu-io', ['-f', 'qcow2', ...same(512 * KiB, CLUSTER), ...same(640 * KiB, 4 * CLUSTER), '-c', `write -z ${600 * MiB} ${CLUSTER}`, image]);
      const bytes = await readFile(image);
      assert.notEqual(Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(40)), 3 * CLUSTER, 'the L1 table moved');
      const map = await runOk('qemu-img', ['map', '--output=json', image]);
      assert.ok((JSON.parse(map) as { offset?: number }[]).some((e) => e.offset === 3 * CLUSTER), `cluster 3 holds data: ${map}`);
    },
  },
  {
    name: 'lazy refcounts, dirty from writes of this open',
    seed: 0xe3a70003,
    lazyRefcounts: true,
    writes: [[0, 3 * CLUSTER], [3 * MiB, 2 * CLUSTER]],
    async make(_dir, base, image) {
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', '-b', base, '-F', 'raw', image, '8M']);
      await runOk('qemu-io', ['-f', 'qcow2', ...same(MiB, MiB), image]);
    },
  },
];

async function runConfig(t: TestContext, c: Config): Promise<void> {
  const dir = `${tmp.dir}/${c.seed.toString(16)}`;
  await runOk('mkdir', ['-p', dir]);
  const base = `${dir}/base.raw`;
  const baseBytes = await makeBase(base, c.base?.size ?? 8 * MiB, c.base?.pattern ?? 4 * MiB);
  const image = `${dir}/image.qcow2`;
  await c.make(dir, base, image);
  const timing = new Rng(c.seed ^ 0x1111);
  const disk = new CrashDisk(new Uint8Array(await readFile(image)), image, () => uniformInt(timing, 0, 3));
  const node = await withDisk(disk).open({ driver: 'qcow2', file: { driver: 'crash-disk' }, backing: null, 'lazy-refcounts': c.lazyRefcounts ?? false });
  try {
    for (const [offset, length] of c.writes ?? []) await node.write(offset, baseBytes.subarray(offset, offset + length));
    disk.mark('empty-start');
    await makeEmpty(node);
  } finally {
    await node.close();
  }
  const start = disk.log.findIndex((e) => e.t === 'mark' && e.label === 'empty-start');
  // The final image: clean, not even a leak, cut to the rebuilt metadata, reading the base.
  const final = `${dir}/final.qcow2`;
  await writeFile(final, disk.contents);
  assert.equal(dirtyBit(disk.contents), false, 'the emptied image is clean');
  await assertCheck(final, { leaks: 0 }, 'the emptied image');
  await assertReadsBase(final, base, 'the emptied image');
  const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', 'qcow2', final])) as { depth: number; present: boolean }[];
  assert.ok(map.every((e) => e.depth > 0 || !e.present), `the emptied image holds nothing: ${JSON.stringify(map)}`);
  const l1Clusters = Math.ceil((new DataView(disk.contents.buffer).getUint32(36) * 8) / CLUSTER);
  assert.equal(disk.contents.byteLength, (3 + l1Clusters) * CLUSTER, 'the file is cut after the new metadata');

  const rng = new Rng(c.seed + 1);
  let judged = 0;
  let dirty = 0;
  for (let at = start; at < disk.log.length; at++) {
    for (let k = 0; k < SUBSETS; k++) {
      const what = `${c.name}: crash after event ${at} of ${disk.log.length}, subset ${k} (seed ${c.seed})`;
      if (await judge(disk.crashImage(at, rng), dir, base, what)) dirty++;
      judged++;
    }
  }
  assert.ok(dirty > 0, 'some crash images were left dirty (the rebuild window was hit)');
  t.diagnostic(`${c.name}: ${disk.log.length - start} events, ${judged} crash images judged, ${dirty} of them dirty and repaired`);
}

function dirtyBit(image: Uint8Array): boolean {
  return (new DataView(image.buffer, image.byteOffset).getBigUint64(72) & 1n) !== 0n;
}

/** One crash image; returns whether it was left dirty. */
async function judge(bytes: Uint8Array, dir: string, base: string, what: string): Promise<boolean> {
  const crashed = `${dir}/crashed.qcow2`;
  await writeFile(crashed, bytes);
  await assertReadsBase(crashed, base, what);
  if (!dirtyBit(bytes)) {
    await assertCheck(crashed, {}, what);
    return false;
  }
  // QEMU's repair.
  await run('qemu-img', ['check', '-q', '-r', 'all', crashed]);
  await assertCheck(crashed, { leaks: 0 }, `${what}, repaired by qemu-img check -r all`);
  await assertReadsBase(crashed, base, `${what}, repaired by qemu-img`);
  // vdisk's own: a writable open of a dirty image repairs it.
  await writeFile(crashed, bytes);
  const node = await open(crashed, { format: 'qcow2' });
  await node.close();
  assert.equal(dirtyBit(new Uint8Array(await readFile(crashed))), false, `${what}: vdisk's open left it clean`);
  await assertCheck(crashed, { leaks: 0 }, `${what}, repaired by vdisk's open`);
  await assertReadsBase(crashed, base, `${what}, repaired by vdisk`);
  return true;
}

async function assertCheck(file: string, want: { leaks?: number }, what: string): Promise<void> {
  const check = await run('qemu-img', ['check', '--output=json', file]);
  let report: Record<string, number>;
  try {
    report = JSON.parse(check.stdout) as Record<string, number>;
  } catch {
    return assert.fail(`${what}: qemu-img check gave no report (exit ${check.code}): ${check.stderr}`);
  }
  assert.equal(report.corruptions ?? 0, 0, `${what}: qemu-img check found corruption: ${check.stdout}`);
  assert.equal(report['check-errors'] ?? 0, 0, `${what}: qemu-img check errors: ${check.stdout}`);
  if (want.leaks !== undefined) assert.equal(report.leaks ?? 0, want.leaks, `${what}: leaks: ${check.stdout}`);
}

async function assertReadsBase(file: string, base: string, what: string): Promise<void> {
  const r = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', file, base]);
  assert.equal(r.code, 0, `${what}: does not read as its backing file: ${r.stdout}${r.stderr}`);
}

describe('qcow2 make-empty by rebuilding: crash images cut from a simulated write cache, judged by QEMU', () => {
  for (const c of configs) {
    it(c.name, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      await runConfig(t, c);
    });
  }
});
