/**
 * vdisk's qcow2 create against `qemu-img create -f qcow2` with the same options. For each case
 * both images are made side by side (same relative names, so names recorded in the header match)
 * and then: the file lengths are equal, cluster 0 is byte-identical (and the whole file, and the
 * data file, when small enough to read), `qemu-img info` and `qemu-img map` agree, `qemu-img check`
 * finds nothing wrong, and qemu-io can write and read back on ours, after which both images are
 * still identical and clean.
 */
import assert from 'node:assert/strict';
import { mkdir, open, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { createQcow2 } from '../../../../src/drivers/format/qcow2/create.js';
import { needNative } from '../../../helpers/native.js';
import { needTools, run, runOk } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';

const K = 1024;
const M = K * K;
const G = M * K;
/** Files up to this size are compared whole. */
const COMPARE_WHOLE = 64 * M;

/** [`-o` options, virtual size]. */
const CASES: [string, number][] = [
  // Sizes, default options (64 KiB clusters); 1 and 511 round up to 512.
  ...[0, 1, 511, M, G, 100 * G, M + 512].map((s): [string, number] => ['', s]),
  // Cluster sizes.
  ...[0, 1, M, G, 100 * G].map((s): [string, number] => ['cluster_size=512', s]),
  ...[1, M + 512, G, 100 * G].map((s): [string, number] => ['cluster_size=4k', s]),
  ...[0, M, 3 * M + 512, G, 100 * G].map((s): [string, number] => ['cluster_size=2M', s]),
  // Compatibility level, refcount widths, lazy refcounts, compression type.
  ['compat=0.10', M],
  ['compat=0.10', G],
  ['compat=0.10,cluster_size=512', M],
  ['compat=1.1', M],
  ['refcount_bits=1', G],
  ['refcount_bits=8', G],
  ['refcount_bits=16', G],
  ['refcount_bits=64', G],
  ['refcount_bits=1,cluster_size=512', 100 * G],
  ['refcount_bits=64,cluster_size=512', 20 * G],
  ['lazy_refcounts=on', G],
  ['lazy_refcounts=off', M],
  ['compression_type=zstd', G],
  ['compression_type=zstd,lazy_refcounts=on,refcount_bits=8', M + 512],
  // Extended L2 entries.
  ['extended_l2=on', G],
  ['extended_l2=on,cluster_size=32k', G],
  ['extended_l2=on,cluster_size=2M', G],
  ['extended_l2=on,cluster_size=32k,preallocation=metadata', M + 512],
  // Preallocation.
  ['preallocation=off', M],
  ['preallocation=metadata', M],
  ['preallocation=metadata', M + 512],
  ['preallocation=metadata', G],
  ['preallocation=metadata', 100 * G],
  ['preallocation=metadata,cluster_size=512', 8 * M],
  ['preallocation=metadata,cluster_size=2M', 5 * M + 512],
  ['preallocation=falloc', 0],
  ['preallocation=falloc', M],
  ['preallocation=falloc', M + 512],
  ['preallocation=falloc,cluster_size=512', 8 * M],
  ['preallocation=falloc,cluster_size=2M', 10 * M],
  ['preallocation=full', 0],
  ['preallocation=full', M],
  ['preallocation=full', M + 512],
  ['preallocation=full,cluster_size=4k,refcount_bits=2', 8 * M],
  // External data file.
  ['data_file=data.raw', M],
  ['data_file=data.raw', 100 * G],
  ['data_file=data.raw,data_file_raw=on', M],
  ['data_file=data.raw,data_file_raw=on', M + 512],
  ['data_file=data.raw,data_file_raw=on,cluster_size=2M', 100 * M],
  ['data_file=data.raw,preallocation=metadata', M + 512],
  ['data_file=data.raw,preallocation=falloc', M],
  ['data_file=data.raw,preallocation=full', M],
  ['data_file=data.raw,preallocation=full', M + 512],
  ['data_file=data.raw,extended_l2=on,preallocation=metadata', M + 512],
  // Backing files.
  ['backing_file=base.qcow2,backing_fmt=qcow2', M],
  ['backing_file=base.raw,backing_fmt=raw', G],
  ['backing_file=base.raw,backing_fmt=raw,cluster_size=512', M],
  ['backing_file=base.qcow2,backing_fmt=qcow2,compat=0.10', M],
  ['backing_file=base.qcow2,backing_fmt=qcow2,extended_l2=on,preallocation=metadata', M],
  ['backing_file=base.qcow2,backing_fmt=qcow2,data_file=data.raw', M],
];

/** No case runs qemu-io's write past the disk; 64 KiB or less. */
function ioLength(size: number): number {
  return Math.min(64 * K, Math.ceil(size / 512) * 512);
}

function parseOptions(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of text.split(',').filter(Boolean)) out[kv.slice(0, kv.indexOf('='))] = kv.slice(kv.indexOf('=') + 1);
  return out;
}

/** Drops what legitimately differs between the two images: their paths and host allocation. */
function normalise(value: unknown, dirs: string[]): unknown {
  if (typeof value === 'string') return dirs.reduce((s, d) => s.split(d).join('<dir>'), value);
  if (Array.isArray(value)) return value.map((v) => normalise(v, dirs));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value)
      .filter(([k]) => k !== 'actual-size' && k !== 'filename')
      .map(([k, v]) => [k, normalise(v, dirs)]));
  }
  return value;
}

async function readAt(file: string, offset: number, length: number): Promise<Uint8Array> {
  const fh = await open(file, 'r');
  try {
    const buf = new Uint8Array(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Asserts two files have the same length, the same first `head` bytes, and (if small) the same bytes. */
async function assertSameFile(ours: string, theirs: string, head: number, what: string): Promise<void> {
  const [a, b] = [await stat(ours), await stat(theirs)];
  assert.equal(a.size, b.size, `${what}: file length`);
  assert.deepEqual(await readAt(ours, 0, head), await readAt(theirs, 0, head), `${what}: first ${head} bytes`);
  if (a.size <= COMPARE_WHOLE) assert.ok(Buffer.from(await readAt(ours, 0, a.size)).equals(Buffer.from(await readAt(theirs, 0, b.size))), `${what}: whole file`);
}

async function qemuImgJson(args: string[], cwd: string): Promise<unknown> {
  return JSON.parse(await runOk('qemu-img', args, { cwd }));
}

async function assertClean(dir: string, what: string): Promise<void> {
  const r = await run('qemu-img', ['check', '--output=json', '-f', 'qcow2', 'img.qcow2'], { cwd: dir });
  assert.equal(r.code, 0, `${what}: qemu-img check exit status ${r.code}: ${r.stdout}${r.stderr}`);
  const report = JSON.parse(r.stdout) as Record<string, number | undefined>;
  for (const k of ['corruptions', 'leaks', 'check-errors', 'corruptions-fixed', 'leaks-fixed']) assert.ok(!report[k], `${what}: ${k} = ${report[k]}`);
}

/** Runs fn with the process in `dir`, so relative names resolve as they do for qemu-img there. */
async function inDir<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const old = process.cwd();
  process.chdir(dir);
  try {
    return await fn();
  } finally {
    process.chdir(old);
  }
}

describe('qcow2 create matches qemu-img create', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir('vdisk-qcow2-create-interop-')));
  after(async () => tmp.cleanup());

  CASES.forEach(([opts, size], n) => {
    it(`-o ${opts || '(defaults)'} size ${size}`, async (t: TestContext) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const options = parseOptions(opts);
      if (options.preallocation === 'falloc' && !needNative(t)) return;
      const theirs = tmp.path(`${n}-qemu`);
      const ours = tmp.path(`${n}-vdisk`);
      for (const dir of [theirs, ours]) {
        await mkdir(dir);
        if (options.backing_file) await runOk('qemu-img', ['create', '-q', '-f', options.backing_fmt!, options.backing_file, String(size)], { cwd: dir });
      }
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), 'img.qcow2', String(size)], { cwd: theirs });
      await inDir(ours, () => createQcow2({ filename: 'img.qcow2', size, options }));

      const clusterSize = (await qemuImgJson(['info', '--output=json', '-f', 'qcow2', 'img.qcow2'], theirs) as { 'cluster-size': number })['cluster-size'];
      const files = ['img.qcow2', ...(options.data_file ? [options.data_file] : [])];
      // Map first: QEMU's map consults host holes, which reads could change on some filesystems.
      const map = async (dir: string) => normalise(await qemuImgJson(['map', '--output=json', '-f', 'qcow2', 'img.qcow2'], dir), [dir]);
      assert.deepEqual(await map(ours), await map(theirs), 'qemu-img map');
      for (const f of files) await assertSameFile(path.join(ours, f), path.join(theirs, f), clusterSize, f);
      const info = async (dir: string) => normalise(await qemuImgJson(['info', '--output=json', '-f', 'qcow2', 'img.qcow2'], dir), [dir]);
      assert.deepEqual(await info(ours), await info(theirs), 'qemu-img info');
      await assertClean(ours, 'ours');

      // QEMU can use ours as it uses its own, and takes the same allocation decisions on both.
      const len = ioLength(size);
      if (len === 0) return;
      for (const dir of [ours, theirs]) {
        const out = await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 0 ${len}`, '-c', `read -P 0x5a 0 ${len}`, 'img.qcow2'], { cwd: dir });
        assert.match(out, /read \d+\/\d+ bytes/, out);
        assert.doesNotMatch(out, /Pattern verification failed|error/i, out);
      }
      await assertClean(ours, 'ours after qemu-io');
      for (const f of files) await assertSameFile(path.join(ours, f), path.join(theirs, f), clusterSize, `${f} after qemu-io`);
    });
  });
});
