/**
 * Lazy refcounts (lazy_refcounts=on) against the real qemu-img and qemu-io 7.2:
 *   - a vdisk process killed (SIGKILL) in the middle of a workload leaves the dirty bit set;
 *     `qemu-img check -r all` repairs the image to clean, and so do vdisk's own repair on a
 *     writable open and `vdisk check -r all`; every write acknowledged by a flush before the
 *     kill reads back;
 *   - a dirty image whose L2 tables hold thousands of misaligned preallocated zero entries:
 *     `vdisk check -r all` reports and counts the repair as `qemu-img check -r all` does, line
 *     for line, and it, vdisk's repair on a writable open and QEMU's own all leave clean images
 *     with the same data (QEMU writes and syncs each entry alone; vdisk one table at a time);
 *   - a clean close leaves the bit clear and an image `qemu-img check` calls clean;
 *   - lazy-refcounts=on on a compat=0.10 image fails with QEMU's message.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFile, readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { assertBytesEqual } from '../../../helpers/bytes.js';
import { vdisk } from '../../../helpers/cli.js';
import { needTools, run, runOk } from '../../../helpers/oracles.js';
import { Qcow2Bytes } from '../../../helpers/qcow2-damage.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { cmdArgs } from '../../../helpers/workload.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** Each batch of the killed workload writes its own region. */
const REGION = 2 * MiB;
const REGIONS = 200;
/** A scratch cluster per batch, written and discarded (frees waiting in memory at the kill). */
const SCRATCH = REGION * REGIONS;
const SIZE = SCRATCH + REGIONS * 64 * KiB;
const REGISTRY = fileURLToPath(new URL('../../../../src/registry/index.ts', import.meta.url));

let tmp: TmpDir;
before(async () => {
  tmp = await makeTmpDir('vdisk-qcow2-lazy-');
});
after(() => tmp.cleanup());

/** The byte batch `k` fills its region with. */
const fill = (k: number) => (k % 250) + 1;

/**
 * The workload the child runs until it is killed: batch k writes region k in unaligned pieces
 * (allocations, copy-on-write of partial clusters), a scratch cluster, discards the scratch
 * cluster of batch k - 1, then flushes and says `flushed k`.
 */
const CHILD = `
  import { open } from ${JSON.stringify(REGISTRY)};
  const [file] = process.argv.slice(1);
  const node = await open({ driver: 'qcow2', file });
  for (let k = 0; k < ${REGIONS}; k++) {
    const base = k * ${REGION};
    const data = new Uint8Array(${REGION}).fill(${'(k % 250) + 1'});
    for (let at = 0; at < ${REGION};) {
      const n = Math.min(${REGION} - at, 100000 + ((k * 7919 + at) % 50000));
      await node.write(base + at, data.subarray(at, at + n));
      at += n;
    }
    await node.write(${SCRATCH} + k * 65536, new Uint8Array(65536).fill(0xee));
    if (k > 0) await node.discard(${SCRATCH} + (k - 1) * 65536, 65536);
    await node.flush();
    process.stdout.write('flushed ' + k + '\\n');
  }
  await new Promise(() => setInterval(() => {}, 1000));
`;

/** Runs the workload on `file` and kills it (SIGKILL) once `batches` batches are flushed; returns the last batch it reported flushed. */
async function killMidWorkload(file: string, batches: number): Promise<number> {
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD, file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.on('exit', (code, signal) => resolve(signal ?? code)));
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes(`flushed ${batches - 1}\n`)) {
        // Mid-batch: the next batch's writes are already under way.
        child.kill('SIGKILL');
        resolve();
      }
    });
    void exited.then(() => reject(new Error(`the workload ended before it was killed: ${err}`)));
  });
  assert.equal(await exited, 'SIGKILL');
  const flushed = [...out.matchAll(/flushed (\d+)/g)].map((m) => Number(m[1]));
  return Math.max(...flushed);
}

async function qemuCheck(file: string): Promise<Record<string, unknown>> {
  const r = await run('qemu-img', ['check', '--output=json', file]);
  assert.equal(r.code, 0, `qemu-img check ${file}: ${r.stdout}${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

async function dirtyFlag(file: string): Promise<boolean> {
  const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', file])) as { 'dirty-flag': boolean };
  return info['dirty-flag'];
}

/** qemu-io checks that regions 0..last hold their batch's bytes. */
async function assertFlushedData(file: string, last: number): Promise<void> {
  const reads = Array.from({ length: last + 1 }, (_, k) => `read -P ${fill(k)} ${k * REGION} ${REGION}`);
  const r = await run('qemu-io', ['-f', 'qcow2', ...cmdArgs(reads), file]);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /Pattern verification failed/, r.stdout.split('\n').filter((l) => /failed/.test(l)).slice(0, 3).join('\n'));
  assert.equal((r.stdout.match(/^read /gm) ?? []).length, last + 1);
}

/**
 * Writes batches 0..2 with flushes, then batch 3, and dies (SIGKILL, by its own hand) in that
 * flush at the moment the first refcount block is about to be written: with lazy refcounts the
 * L2 tables of batch 3 are on disk by then, their refcounts not.
 */
const CRASH_BEFORE_REFCOUNTS = `
  import { open } from ${JSON.stringify(REGISTRY)};
  const [file] = process.argv.slice(1);
  const node = await open({ driver: 'qcow2', file });
  const raw = node.file;
  const head = new Uint8Array(8);
  await raw.read(48, head);
  const reftable = Number(new DataView(head.buffer).getBigUint64(0));
  await raw.read(reftable, head);
  const refblock = Number(new DataView(head.buffer).getBigUint64(0));
  let armed = false;
  const write = raw.write.bind(raw);
  raw.write = (offset, data, opts) => {
    if (armed && offset === refblock) process.kill(process.pid, 'SIGKILL');
    return write(offset, data, opts);
  };
  for (let k = 0; k < 4; k++) {
    armed = k === 3;
    await node.write(k * ${REGION}, new Uint8Array(${REGION}).fill(${'(k % 250) + 1'}));
    await node.flush();
  }
  process.stdout.write('not killed\\n');
`;

describe('qcow2 lazy refcounts, as QEMU sees them', () => {
  it('refcounts lag behind the tables: a crash between them leaves what qemu-img check -r all repairs', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const image = tmp.path('lag.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', image, String(SIZE)]);
    const r = await run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CRASH_BEFORE_REFCOUNTS, image]);
    assert.notEqual(r.code, 0, `the writer was not killed: ${r.stdout}${r.stderr}`);
    assert.doesNotMatch(r.stdout, /not killed/);
    assert.equal(r.stderr, '', 'the writer died of SIGKILL, not of an error');
    assert.equal(await dirtyFlag(image), true);
    // Batch 3's clusters are referenced but not counted: corruptions, as QEMU reports them.
    const before = await run('qemu-img', ['check', '--output=json', image]);
    assert.equal(before.code, 2, `qemu-img check before the repair: ${before.stdout}${before.stderr}`);
    assert.ok((JSON.parse(before.stdout) as { corruptions: number }).corruptions > 0);
    const repair = await run('qemu-img', ['check', '-r', 'all', image]);
    assert.equal(repair.code, 0, `${repair.stdout}${repair.stderr}`);
    const result = await qemuCheck(image);
    assert.equal(result.corruptions ?? 0, 0);
    assert.equal(result.leaks ?? 0, 0);
    // The tables made it, so batch 3 reads back too.
    await assertFlushedData(image, 3);
  });


  it('a vdisk killed mid-workload leaves the image dirty, repairable, with every flushed write', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const image = tmp.path('killed.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', image, String(SIZE)]);
    const last = await killMidWorkload(image, 6);
    assert.ok(last >= 5);
    assert.equal(await dirtyFlag(image), true, 'the dirty bit is set');

    const byQemu = tmp.path('by-qemu.qcow2');
    const byOpen = tmp.path('by-open.qcow2');
    const byCheck = tmp.path('by-check.qcow2');
    for (const copy of [byQemu, byOpen, byCheck]) await copyFile(image, copy);

    // QEMU's repair.
    const repair = await run('qemu-img', ['check', '-r', 'all', byQemu]);
    assert.equal(repair.code, 0, `qemu-img check -r all: ${repair.stdout}${repair.stderr}`);
    // vdisk's repair when it opens a dirty image for writing.
    const reopened = await vdisk(['io', '-c', 'flush', byOpen]);
    assert.equal(reopened.code, 0, reopened.stderr);
    // vdisk check -r all.
    const checked = await vdisk(['check', '-r', 'all', byCheck]);
    assert.ok(checked.code === 0 || checked.code === 3, `vdisk check -r all: ${checked.code} ${checked.stdout}${checked.stderr}`);

    for (const copy of [byQemu, byOpen, byCheck]) {
      const result = await qemuCheck(copy);
      assert.equal(result.corruptions ?? 0, 0, copy);
      assert.equal(result.leaks ?? 0, 0, copy);
      assert.equal(await dirtyFlag(copy), false, copy);
      await assertFlushedData(copy, last);
    }
  });

  for (const extendedL2 of [false, true]) {
    it(`repairs thousands of misaligned preallocated zero entries of a dirty image as qemu-img check -r all does${extendedL2 ? ' (extended L2)' : ''}`, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const image = tmp.path(`prealloc-${extendedL2}.qcow2`);
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=64k,lazy_refcounts=on,extended_l2=${extendedL2 ? 'on' : 'off'}`, image, '1G']);
      // Two L2 tables on disk, then a write that only the dirty bit accounts for.
      // (qemu-io's output dies with it, unflushed.)
      await run('qemu-io', ['-f', 'qcow2', ...cmdArgs(['write -P 0x11 0 128k', 'write -P 0x22 768M 64k', 'flush', 'write -P 0x33 320k 64k', 'abort']), image]);
      assert.equal(await dirtyFlag(image), true, 'qemu-io abort left the image dirty');

      // Entries that preallocate a cluster 0x200..0xfe00 into guest cluster 0's host cluster and
      // hold no data there: a run of thousands in the first table, every third in the second
      // (separate runs of one table). With extended L2 the subcluster bitmap says "zero" or "unallocated".
      const q = await Qcow2Bytes.load(image);
      const [t0, t1] = q.l2Tables();
      assert.ok(t0 && t1, 'two L2 tables');
      const host0 = Number(q.u64(t0.offset) & 0x00fffffffffffe00n);
      let damaged = 0;
      const damage = (table: number, index: number) => {
        const at = table + index * q.entryBytes;
        const host = BigInt(host0 + 0x200 * (1 + (index % 127)));
        if (!extendedL2) {
          q.setU64(at, host | 1n);
        } else {
          q.setU64(at, host);
          q.setU64(at + 8, index % 2 ? 0xffffffff00000000n : 0x0000f00f00000000n);
        }
        damaged++;
      };
      for (let i = 8; i < 8 + (extendedL2 ? 2000 : 3000); i++) damage(t0.offset, i);
      for (let i = 16; i < 16 + 3 * 1000; i += 3) damage(t1.offset, i);
      await q.save();

      const byQemu = tmp.path(`prealloc-${extendedL2}-qemu.qcow2`);
      const byCheck = tmp.path(`prealloc-${extendedL2}-check.qcow2`);
      const byOpen = tmp.path(`prealloc-${extendedL2}-open.qcow2`);
      for (const copy of [byQemu, byCheck, byOpen]) await copyFile(image, copy);

      const theirs = await run('qemu-img', ['check', '-r', 'all', '--output=json', byQemu]);
      const ours = await vdisk(['check', '-r', 'all', '--output=json', byCheck]);
      const msg = `qemu-img check -r all: exit ${theirs.code}\n${theirs.stdout}\nvdisk check -r all: exit ${ours.code}\n${ours.stdout}${ours.stderr.slice(0, 2000)}`;
      assert.equal(ours.code, theirs.code, msg);
      const counters = (stdout: string) => {
        const j = JSON.parse(stdout) as Record<string, number>;
        return ['corruptions', 'leaks', 'check-errors', 'corruptions-fixed', 'leaks-fixed', 'allocated-clusters', 'fragmented-clusters'].map((k) => j[k] ?? 0);
      };
      assert.deepEqual(counters(ours.stdout), counters(theirs.stdout), msg);
      assert.ok(counters(theirs.stdout)[3]! >= damaged, `QEMU fixed every damaged entry: ${theirs.stdout}`);
      assert.deepEqual(ours.stderr.split('\n'), theirs.stderr.split('\n'), 'the same lines, in the same order');
      assert.equal(theirs.stderr.split('\n').filter((l) => /^Repairing offset=.*Preallocated cluster is not properly aligned/.test(l)).length, damaged);

      const reopened = await vdisk(['io', '-c', 'flush', byOpen]);
      assert.equal(reopened.code, 0, reopened.stderr);

      for (const copy of [byQemu, byCheck, byOpen]) {
        const result = await qemuCheck(copy);
        assert.equal(result.corruptions ?? 0, 0, copy);
        assert.equal(result.leaks ?? 0, 0, copy);
        assert.equal(await dirtyFlag(copy), false, copy);
      }
      // The same repair, so the same file, byte for byte.
      assertBytesEqual(await readFile(byCheck), await readFile(byQemu), 'vdisk check -r all and qemu-img check -r all');
      for (const copy of [byCheck, byOpen]) {
        const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', byQemu, copy]);
        assert.equal(cmp.code, 0, `qemu-img compare ${byQemu} ${copy}: ${cmp.stdout}${cmp.stderr}`);
      }
      await runOk('qemu-io', ['-f', 'qcow2', ...cmdArgs(['read -P 0x11 0 128k', 'read -P 0x22 768M 64k', 'read -P 0 512k 1M']), byOpen]);
    });
  }

  it('a clean close leaves the dirty bit clear and an image qemu-img check calls clean', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const image = tmp.path('clean.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', image, String(64 * MiB)]);
    const r = await vdisk(['io', ...cmdArgs(['write -P 7 0 1M', 'write -P 8 5M 300k', 'flush', 'write -z -u 0 64k', 'discard 5M 64k', 'write -P 9 9M 64k']), image]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await dirtyFlag(image), false);
    const result = await qemuCheck(image);
    assert.equal(result.corruptions ?? 0, 0);
    assert.equal(result.leaks ?? 0, 0);
    await runOk('qemu-io', ['-f', 'qcow2', ...cmdArgs(['read -P 0 0 64k', 'read -P 7 64k 960k', 'read -P 0 5M 64k', 'read -P 8 5308416 241664', 'read -P 9 9M 64k']), image]);
  });

  it('refuses lazy-refcounts=on for compat=0.10 with QEMU\'s message', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const image = tmp.path('v2.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', image, '1M']);
    const opts = `driver=qcow2,file.filename=${image},lazy-refcounts=on`;
    const q = await run('qemu-img', ['info', '--image-opts', opts]);
    const reason = /Could not open '.*?': (.*)/.exec(q.stderr)?.[1];
    assert.ok(reason, q.stderr);
    const v = await vdisk(['info', '--image-opts', opts]);
    assert.equal(v.code, 1);
    assert.ok(v.stderr.includes(reason), `vdisk: ${v.stderr} qemu-img: ${reason}`);
  });
});
