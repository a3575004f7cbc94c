/**
 * The qcow2 allocate path judged by QEMU: a seeded random workload of writes into fresh
 * clusters (small, unaligned, several at once into one cluster) goes to two copies of one
 * image made by qemu-img: through qemu-io, one command after another, and through vdisk, in
 * batches of concurrent non-overlapping writes (so the allocate path's early L2 update meets
 * writes racing into the same new cluster), with flushes, zero writes and discards between
 * some batches (zero clusters that keep their host cluster and its stale bytes, freed clusters
 * handed out again: what the zeroing must really zero). Then
 * `qemu-img compare` must call the two identical and `qemu-img check` vdisk's copy clean.
 *
 * Configurations: no backing file; a qcow2 and a sparse raw backing file (data under some
 * clusters' heads and tails, so copy-on-write and the allocate path mix); the preallocate
 * filter under the image; an ext2 file system, which cannot allocate cheaply (every new
 * cluster copies-on-write after the first refusal). Each checks that the path it is about
 * was taken, from the zero writes that reached the image file.
 *
 * Replay one with VDISK_ALLOC_SEED=<seed> and --test-name-pattern.
 */
import assert from 'node:assert/strict';
import { copyFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { BlockNode } from '../../../../src/core/block-node.js';
import { open, type NodeSpec } from '../../../../src/registry/index.js';
import { mountLoopFs } from '../../../helpers/loop-fs.js';
import { needNative } from '../../../helpers/native.js';
import { needTools, run, runOk } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { uniformInt } from '../../../helpers/uniform-int.js';
import { cmdArgs, Rng } from '../../../helpers/workload.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 24 * MiB + 3584;
const CLUSTER = 64 * KiB;
const WRITES = 480;
const BATCH = 12;

interface Config {
  name: string;
  options: string;
  backing?: 'qcow2' | 'raw';
  preallocate?: boolean;
  ext2?: boolean;
  seed: number;
}

const CONFIGS: Config[] = [
  { name: 'no backing file', options: 'cluster_size=65536', seed: 0xa11c0001 },
  { name: 'qcow2 backing file', options: 'cluster_size=65536', backing: 'qcow2', seed: 0xa11c0002 },
  { name: 'sparse raw backing file', options: 'cluster_size=65536', backing: 'raw', seed: 0xa11c0003 },
  { name: 'preallocate filter', options: 'cluster_size=65536', preallocate: true, seed: 0xa11c0004 },
  { name: 'compat=0.10 over a qcow2 backing file', options: 'compat=0.10,cluster_size=65536', backing: 'qcow2', seed: 0xa11c0005 },
  { name: 'ext2: no cheap zeroing', options: 'cluster_size=65536', ext2: true, seed: 0xa11c0006 },
];

const SEED = process.env.VDISK_ALLOC_SEED === undefined ? undefined : Number(process.env.VDISK_ALLOC_SEED);

interface Write {
  offset: number;
  length: number;
  byte: number;
}

/** Between batches: a flush, or whole clusters zeroed (kept allocated unless unmap) or discarded, for later writes to reuse. */
type Between = { op: 'flush' } | { op: 'zero' | 'zero-unmap' | 'discard'; offset: number; length: number };

/**
 * Batches of writes, no two in a batch overlapping: mostly 512 B to 16 KiB, a third of them
 * unaligned, aimed at a few clusters at a time so that batches crowd into fresh ones; now and
 * then, between batches, a flush or whole clusters of the last neighbourhood zeroed or
 * discarded (clusters that keep stale data, or that are freed and handed out again).
 */
function workload(seed: number): (Write[] | Between)[] {
  const r = new Rng(seed);
  const rng = { int: (lo: number, hi: number) => uniformInt(r, lo, hi) };
  const out: (Write[] | Between)[] = [];
  let left = WRITES;
  while (left > 0) {
    const batch: Write[] = [];
    // The batch's neighbourhood: 1-3 clusters somewhere on the disk.
    const first = rng.int(0, Math.floor(SIZE / CLUSTER) - 1) * CLUSTER;
    const span = Math.min(rng.int(1, 3) * CLUSTER, SIZE - first);
    for (let tries = 0; batch.length < BATCH && tries < 40 && left > 0; tries++) {
      const unaligned = rng.int(0, 2) === 0;
      const length = unaligned ? rng.int(1, 16 * KiB) : rng.int(1, 32) * 512;
      if (length > span) continue;
      const offset = first + (unaligned ? rng.int(0, span - length) : rng.int(0, Math.floor((span - length) / 512)) * 512);
      if (batch.some((w) => offset < w.offset + w.length && w.offset < offset + length)) continue;
      batch.push({ offset, length, byte: rng.int(1, 255) });
      left--;
    }
    out.push(batch);
    const roll = rng.int(0, 19);
    if (roll < 2) out.push({ op: 'flush' });
    else if (roll < 6) out.push({ op: (['zero', 'zero-unmap', 'discard'] as const)[roll % 3]!, offset: first, length: span - (span % CLUSTER) || span });
  }
  return out;
}

function qemuCommands(ops: (Write[] | Between)[]): string[] {
  return ops.flatMap((b) => {
    if (Array.isArray(b)) return b.map((w) => `write -P ${w.byte} ${w.offset} ${w.length}`);
    if (b.op === 'flush') return ['flush'];
    return [`${b.op === 'discard' ? 'discard' : b.op === 'zero' ? 'write -z' : 'write -z -u'} ${b.offset} ${b.length}`];
  });
}

/** vdisk: each batch's writes at once; counts the zero writes that reach the image file. */
async function applyVdisk(spec: NodeSpec, ops: (Write[] | Between)[]): Promise<{ allocating: number; refused: number }> {
  const node = await open(spec);
  let allocating = 0;
  let refused = 0;
  try {
    let file: BlockNode = node.file!;
    if (file.driver === 'preallocate') file = file.file!;
    const zero = file.writeZeroes.bind(file);
    file.writeZeroes = async (offset, length, opts = {}) => {
      if (opts.allocate) allocating++;
      try {
        return await zero(offset, length, opts);
      } catch (err) {
        if (opts.allocate) refused++;
        throw err;
      }
    };
    for (const b of ops) {
      if (Array.isArray(b)) await Promise.all(b.map((w) => node.write(w.offset, new Uint8Array(w.length).fill(w.byte))));
      else if (b.op === 'flush') await node.flush();
      else if (b.op === 'discard') await node.discard(b.offset, b.length);
      else await node.writeZeroes(b.offset, b.length, { mayUnmap: b.op === 'zero-unmap' });
    }
  } finally {
    await node.close();
  }
  return { allocating, refused };
}

async function makeBacking(kind: 'qcow2' | 'raw', dir: string): Promise<string> {
  // Data in scattered pieces (some cluster heads and tails, some islands, some whole clusters),
  // holes and a zeroed range elsewhere.
  const cmds = ['write -P 0xb1 0 1M', 'write -P 0xb2 3M 4k', `write -P 0xb3 ${5 * MiB + 60 * KiB} 8k`, `write -P 0xb4 ${7 * MiB + 20 * KiB} 24k`,
    'write -P 0xb5 9M 512', 'write -P 0xb6 12M 2M', 'write -z 15M 1M', `write -P 0xb7 ${17 * MiB + 32 * KiB} 4k`, `write -P 0xb8 ${20 * MiB + 1000} 3000`];
  const file = `${dir}/base.${kind}`;
  if (kind === 'qcow2') {
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', file, String(22 * MiB)]);
  } else {
    await writeFile(file, '');
    await runOk('truncate', ['-s', String(22 * MiB), file]);
  }
  await runOk('qemu-io', ['-f', kind, ...cmdArgs(cmds), file]);
  return file;
}

async function checkClean(file: string): Promise<void> {
  const r = await run('qemu-img', ['check', '--output=json', file]);
  const report = JSON.parse(r.stdout || '{}') as Record<string, number>;
  assert.equal(r.code, 0, `qemu-img check ${file}: ${r.stdout}${r.stderr}`);
  for (const k of ['corruptions', 'leaks', 'check-errors']) assert.equal(report[k] ?? 0, 0, `qemu-img check: ${k} ${report[k]}`);
}

let tmp: TmpDir;
before(async () => (tmp = await makeTmpDir('vdisk-alloc-interop-')));
after(() => tmp.cleanup());

async function runConfig(t: TestContext, c: Config): Promise<void> {
  let dir = `${tmp.dir}/${c.seed.toString(16)}`;
  await runOk('mkdir', ['-p', dir]);
  if (c.ext2) {
    const fs = await mountLoopFs(t, 'mkfs.ext2', ['-q', '-F'], 96 * MiB);
    if (!fs) return;
    dir = fs.dir;
  }
  const image = `${dir}/image.qcow2`;
  const backing = c.backing ? ['-b', await makeBacking(c.backing, dir), '-F', c.backing] : [];
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', c.options, ...backing, image, String(SIZE)]);
  const q = `${dir}/qemu.qcow2`;
  const v = `${dir}/vdisk.qcow2`;
  await copyFile(image, q);
  await copyFile(image, v);
  const seed = SEED ?? c.seed;
  const ops = workload(seed);
  const replay = `replay: VDISK_ALLOC_SEED=${seed} node --import tsx --test --test-name-pattern='${c.name}' test/interop/drivers/qcow2/alloc-space.test.ts`;

  const qemu = await run('qemu-io', ['-f', 'qcow2', ...cmdArgs(qemuCommands(ops)), q]);
  assert.equal(qemu.code, 0, `qemu-io: ${qemu.stderr}`);
  const file = c.preallocate ? { driver: 'preallocate', file: v } : v;
  const { allocating, refused } = await applyVdisk({ driver: 'qcow2', file }, ops);

  const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', q, v]);
  assert.equal(cmp.code, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}\n${replay}`);
  await checkClean(v);
  if (c.ext2) {
    assert.equal(refused, 1, `one refused allocate zero write, then copy-on-write (${allocating} asked)`);
  } else {
    assert.equal(refused, 0);
    assert.ok(allocating > (c.preallocate ? 0 : 20), `the allocate path was taken: ${allocating} allocate zero writes`);
  }
  t.diagnostic(`${c.name}: seed ${seed}, ${WRITES} writes, ${allocating} allocate zero writes reached the file`);
}

describe('qcow2 writes into fresh clusters through the allocate path, judged by qemu-img compare and check', () => {
  for (const c of CONFIGS) {
    it(c.name, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io') || !needNative(t)) return;
      await runConfig(t, c);
    });
  }
});
