/**
 * qcow2's allocate path (QEMU's handle_alloc_space): a partial write into a cluster that reads
 * zeros around the write zeroes the new host cluster with one allocate zero write and writes
 * only the guest's bytes; where backing data lies under the untouched parts it copies-on-write
 * as before; and once the cluster is zeroed, other writes into it go ahead without waiting.
 * Observed on the requests that reach the image file. QEMU's judgement of the same images is
 * in test/interop/drivers/qcow2/alloc-space.test.ts.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { BlockNode } from '../../../../../src/core/block-node.js';
import { open, type NodeSpec } from '../../../../../src/registry/index.js';
import { pattern } from '../../../../helpers/bytes.js';
import { vdisk } from '../../../../helpers/cli.js';
import { mountLoopFs } from '../../../../helpers/loop-fs.js';
import { needNative } from '../../../../helpers/native.js';
import { nextTurn } from '../../../../helpers/test-nodes.js';
import { makeTmpDir, type TmpDir } from '../../../../helpers/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CLUSTER = 64 * KiB;

interface FileCall {
  op: 'write' | 'zero';
  offset: number;
  length: number;
  allocate?: boolean;
}

/** Records the writes and zero writes that reach a node (the qcow2 image's file). */
function record(file: BlockNode): FileCall[] {
  const calls: FileCall[] = [];
  const write = file.write.bind(file);
  const zero = file.writeZeroes.bind(file);
  file.write = (offset, data, opts) => {
    calls.push({ op: 'write', offset, length: data.byteLength });
    return write(offset, data, opts);
  };
  file.writeZeroes = (offset, length, opts = {}) => {
    calls.push({ op: 'zero', offset, length, allocate: opts.allocate === true });
    return zero(offset, length, opts);
  };
  return calls;
}

let tmp: TmpDir;
let n = 0;
before(async () => (tmp = await makeTmpDir('vdisk-alloc-space-')));
after(() => tmp.cleanup());

async function create(size: number, args: string[] = [], dir = tmp.dir): Promise<string> {
  const file = `${dir}/i${++n}.qcow2`;
  const r = await vdisk(['create', '-q', '-f', 'qcow2', ...args, file, String(size)]);
  assert.equal(r.code, 0, r.stderr);
  return file;
}

async function openImage(t: TestContext, spec: NodeSpec): Promise<BlockNode> {
  const node = await open(spec);
  t.after(() => node.close());
  return node;
}

async function readBack(node: BlockNode, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await node.read(offset, buf);
  return buf;
}

/** A cluster's expected contents: zeros with `data` at `at`. */
function clusterWith(at: number, data: Uint8Array, base: Uint8Array = new Uint8Array(CLUSTER)): Uint8Array {
  const out = base.slice();
  out.set(data, at);
  return out;
}

describe('qcow2 allocate path', () => {
  it('a partial write into a fresh cluster: one allocate zero write of the cluster, then only the guest bytes', async (t) => {
    if (!needNative(t)) return;
    const node = await openImage(t, { driver: 'qcow2', file: await create(16 * MiB) });
    const calls = record(node.file!);
    const data = pattern(4 * KiB, 1);
    await node.write(CLUSTER + 8 * KiB, data);
    const zero = calls.filter((c) => c.op === 'zero');
    assert.equal(zero.length, 1, JSON.stringify(calls));
    assert.deepEqual({ ...zero[0], offset: 0 }, { op: 'zero', offset: 0, length: CLUSTER, allocate: true });
    const host = zero[0]!.offset;
    assert.equal(host % CLUSTER, 0);
    assert.deepEqual(calls.filter((c) => c.op === 'write'), [{ op: 'write', offset: host + 8 * KiB, length: 4 * KiB }]);
    assert.deepEqual(await readBack(node, CLUSTER, CLUSTER), clusterWith(8 * KiB, data));
    // The rest of the cluster, written later, goes in place.
    calls.length = 0;
    await node.write(CLUSTER + 60 * KiB, data);
    assert.deepEqual(calls, [{ op: 'write', offset: host + 60 * KiB, length: 4 * KiB }]);
  });

  it('alloc-space=off: copy-on-write writes the whole cluster, zeros included', async (t) => {
    const node = await openImage(t, { driver: 'qcow2', file: await create(16 * MiB), 'alloc-space': false });
    const calls = record(node.file!);
    await node.write(CLUSTER + 8 * KiB, pattern(4 * KiB, 2));
    assert.equal(calls.filter((c) => c.op === 'zero').length, 0);
    assert.deepEqual(calls.filter((c) => c.op === 'write').map((c) => c.length), [CLUSTER]);
    assert.deepEqual(await readBack(node, CLUSTER, CLUSTER), clusterWith(8 * KiB, pattern(4 * KiB, 2)));
  });

  it('zero clusters: a preallocated one keeps its host cluster, a plain one gets a new one; both zeroed cheaply', async (t) => {
    if (!needNative(t)) return;
    const node = await openImage(t, { driver: 'qcow2', file: await create(16 * MiB) });
    await node.write(0, pattern(2 * CLUSTER, 3));
    // Without unmap the host clusters stay (ZERO_ALLOC); with it they go (ZERO_PLAIN).
    await node.writeZeroes(0, CLUSTER);
    await node.writeZeroes(CLUSTER, CLUSTER, { mayUnmap: true });
    await node.flush();
    const [kept] = await node.blockStatusList(0, CLUSTER);
    assert.equal(kept!.zero, true);
    assert.notEqual(kept!.hostOffset, undefined, 'ZERO_ALLOC keeps a host offset');
    const calls = record(node.file!);
    await node.write(4 * KiB, pattern(4 * KiB, 4));
    await node.write(CLUSTER + 4 * KiB, pattern(4 * KiB, 5));
    const zero = calls.filter((c) => c.op === 'zero');
    assert.equal(zero.length, 2, JSON.stringify(calls));
    assert.equal(zero[0]!.offset, kept!.hostOffset, 'the preallocated host cluster is zeroed in place');
    assert.notEqual(zero[1]!.offset, kept!.hostOffset);
    assert.deepEqual(calls.filter((c) => c.op === 'write').map((c) => c.length), [4 * KiB, 4 * KiB]);
    assert.deepEqual(await readBack(node, 0, CLUSTER), clusterWith(4 * KiB, pattern(4 * KiB, 4)));
    assert.deepEqual(await readBack(node, CLUSTER, CLUSTER), clusterWith(4 * KiB, pattern(4 * KiB, 5)));
  });

  it('over a backing file: data under the untouched parts is copied; data only under the written range is not', async (t) => {
    if (!needNative(t)) return;
    // A raw backing file with data in cluster 0 and a 4 KiB island at 8 KiB into cluster 1.
    const base = `${tmp.dir}/base${++n}.raw`;
    const baseBytes = new Uint8Array(4 * CLUSTER);
    baseBytes.set(pattern(CLUSTER, 6));
    baseBytes.set(pattern(4 * KiB, 7), CLUSTER + 8 * KiB);
    await writeFile(base, '');
    const b = await open({ driver: 'file', filename: base, growable: true });
    await b.write(0, baseBytes.subarray(0, CLUSTER));
    await b.write(CLUSTER + 8 * KiB, baseBytes.subarray(CLUSTER + 8 * KiB, CLUSTER + 12 * KiB));
    await b.resize(4 * CLUSTER);
    await b.close();
    const top = await create(4 * CLUSTER, ['-b', base, '-F', 'raw']);
    const node = await openImage(t, { driver: 'qcow2', file: top });
    const calls = record(node.file!);

    // Cluster 0: backing data around the write: copy-on-write, one whole-cluster write.
    await node.write(8 * KiB, pattern(4 * KiB, 8));
    assert.deepEqual(calls.map((c) => [c.op, c.length]), [['write', CLUSTER]]);
    assert.deepEqual(await readBack(node, 0, CLUSTER), clusterWith(8 * KiB, pattern(4 * KiB, 8), baseBytes.subarray(0, CLUSTER)));

    // Cluster 1: the write covers the island exactly; zeros around it: zeroed cheaply.
    calls.length = 0;
    await node.write(CLUSTER + 8 * KiB, pattern(4 * KiB, 9));
    assert.deepEqual(calls.map((c) => [c.op, c.length]), [['zero', CLUSTER], ['write', 4 * KiB]]);
    assert.deepEqual(await readBack(node, CLUSTER, CLUSTER), clusterWith(8 * KiB, pattern(4 * KiB, 9)));

    // Cluster 1 again, but the island is under the untouched part: copy-on-write.
    calls.length = 0;
    const other = await create(4 * CLUSTER, ['-b', base, '-F', 'raw']);
    const node2 = await openImage(t, { driver: 'qcow2', file: other });
    const calls2 = record(node2.file!);
    await node2.write(CLUSTER + 32 * KiB, pattern(4 * KiB, 10));
    assert.deepEqual(calls2.map((c) => [c.op, c.length]), [['write', CLUSTER]]);
    assert.deepEqual(await readBack(node2, CLUSTER, CLUSTER),
      clusterWith(32 * KiB, pattern(4 * KiB, 10), baseBytes.subarray(CLUSTER, 2 * CLUSTER)));

    // Cluster 2: nothing in the backing file: zeroed cheaply; cluster 3 past the data too.
    calls.length = 0;
    await node.write(2 * CLUSTER + 100, pattern(1000, 11));
    assert.deepEqual(calls.map((c) => [c.op, c.length]), [['zero', CLUSTER], ['write', 1000]]);
  });

  it('once a new cluster is zeroed, writes to its other parts go ahead while its first write is still in flight', async (t) => {
    if (!needNative(t)) return;
    for (const allocSpace of [true, false]) {
      const node = await openImage(t, { driver: 'qcow2', file: await create(16 * MiB), 'alloc-space': allocSpace });
      const file = node.file!;
      // Hold the first 4 KiB data write that reaches the file until released.
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      let started!: () => void;
      const firstStarted = new Promise<void>((resolve) => (started = resolve));
      let holding = true;
      const write = file.write.bind(file);
      file.write = async (offset, data, opts) => {
        if (holding) {
          holding = false;
          started();
          await held;
        }
        return write(offset, data, opts);
      };
      let aDone = false;
      const a = node.write(0, pattern(4 * KiB, 12)).then(() => (aDone = true));
      await firstStarted;
      let bDone = false;
      const b = node.write(8 * KiB, pattern(4 * KiB, 13)).then(() => (bDone = true));
      if (allocSpace) {
        // Would hang without the allocate path: b waits for nothing a has.
        await b;
        assert.equal(aDone, false, 'a is still held');
      } else {
        // Copy-on-write holds the metadata lock through a's data write: b cannot finish.
        for (let i = 0; i < 50; i++) await nextTurn();
        await node.read(MiB, new Uint8Array(4096));
        assert.equal(bDone, false, 'without the allocate path b waits for a');
      }
      release();
      await Promise.all([a, b]);
      const want = new Uint8Array(CLUSTER);
      want.set(pattern(4 * KiB, 12));
      want.set(pattern(4 * KiB, 13), 8 * KiB);
      assert.deepEqual(await readBack(node, 0, CLUSTER), want, `alloc-space=${allocSpace}`);
    }
  });

  it('writes into a zeroed new cluster do not wait for its L2 update, even while the metadata lock is held', async (t) => {
    if (!needNative(t)) return;
    const node = await openImage(t, { driver: 'qcow2', file: await create(16 * MiB) });
    const file = node.file!;
    const gate = () => {
      let open!: () => void;
      const shut = new Promise<void>((resolve) => (open = resolve));
      return { shut, open };
    };
    // The zeroing waits for `zeroGate`; the next flush of the file holds the lock until `flushGate`.
    const zeroGate = gate();
    const flushGate = gate();
    let zeroStarted!: () => void;
    const zeroing = new Promise<void>((resolve) => (zeroStarted = resolve));
    const zero = file.writeZeroes.bind(file);
    file.writeZeroes = async (offset, length, opts) => {
      zeroStarted();
      await zeroGate.shut;
      return zero(offset, length, opts);
    };
    let flushStarted!: () => void;
    const flushing = new Promise<void>((resolve) => (flushStarted = resolve));
    const flush = file.flush.bind(file);
    file.flush = async (opts) => {
      flushStarted();
      await flushGate.shut;
      return flush(opts);
    };
    const a = node.write(CLUSTER, pattern(4 * KiB, 40));
    await zeroing;
    // A flush takes the lock (and keeps it); the zeroing finishes; its L2 update queues behind.
    const f = node.flush();
    await flushing;
    zeroGate.open();
    let bDone = false;
    const b = node.write(CLUSTER + 8 * KiB, pattern(4 * KiB, 41)).then(() => (bDone = true));
    // The write finishes while the lock is still held, so before the entry points at the
    // cluster. (Turns of the event loop with I/O in them, not time: a write that waits for
    // the lock never finishes here, and the gate opens for it after the check.)
    for (let i = 0; i < 200 && !bDone; i++) {
      await nextTurn();
      await node.read(8 * MiB, new Uint8Array(512));
    }
    flushGate.open();
    assert.equal(bDone, true, 'the write into the zeroed cluster waited for the L2 update');
    await Promise.all([a, b, f]);
    assert.deepEqual(await readBack(node, CLUSTER, CLUSTER), clusterWith(8 * KiB, pattern(4 * KiB, 41), clusterWith(0, pattern(4 * KiB, 40))));
  });

  it('where the file cannot zero cheaply (ext2) it copies-on-write, and stops asking after the first refusal', async (t) => {
    if (!needNative(t)) return;
    const fs = await mountLoopFs(t, 'mkfs.ext2', ['-q', '-F'], 32 * MiB);
    if (!fs) return;
    const node = await openImage(t, { driver: 'qcow2', file: await create(16 * MiB, [], fs.dir) });
    const calls = record(node.file!);
    for (let i = 0; i < 4; i++) await node.write(i * CLUSTER + 4 * KiB, pattern(4 * KiB, 20 + i));
    assert.equal(calls.filter((c) => c.op === 'zero').length, 1, 'one refused allocate zero write');
    assert.deepEqual(calls.filter((c) => c.op === 'write').map((c) => c.length), [CLUSTER, CLUSTER, CLUSTER, CLUSTER]);
    for (let i = 0; i < 4; i++) assert.deepEqual(await readBack(node, i * CLUSTER, CLUSTER), clusterWith(4 * KiB, pattern(4 * KiB, 20 + i)));
  });

  it('over the preallocate filter, zeroing new clusters at the end of the file costs no request at all', async (t) => {
    if (!needNative(t)) return;
    const file = await create(16 * MiB);
    const node = await openImage(t, { driver: 'qcow2', file: { driver: 'preallocate', file } });
    const filter = node.file!;
    const below = record(filter.file!);
    for (let i = 0; i < 8; i++) await node.write(i * CLUSTER + 512, pattern(512, 30 + i));
    // One preallocation; the eight cluster zeroings were merged into it.
    assert.deepEqual(below.filter((c) => c.op === 'zero').map((c) => c.allocate), [true]);
    assert.equal(below.filter((c) => c.op === 'write').length, 8);
    for (let i = 0; i < 8; i++) assert.deepEqual(await readBack(node, i * CLUSTER, CLUSTER), clusterWith(512, pattern(512, 30 + i)));
  });
});
