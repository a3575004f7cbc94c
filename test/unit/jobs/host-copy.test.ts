import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import type { Qcow2Node } from '../../../src/drivers/format/qcow2/qcow2-node.js';
import { FileNode } from '../../../src/drivers/protocol/file/file-node.js';
import { copyImage } from '../../../src/jobs/copy-engine.js';
import { planCopy } from '../../../src/jobs/copy-plan.js';
import { HostCopy } from '../../../src/jobs/host-copy.js';
import { native } from '../../../src/native/index.js';
import { open, registry } from '../../../src/registry/index.js';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { needNative } from '../../helpers/native.js';
import { makeSparseFile, makeTmpDir } from '../../helpers/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Data, written zeros (allocated, yet to be left sparse), a hole, and data not on a block boundary. */
function sourceRuns() {
  const zeros = new Uint8Array(3 * MiB);
  const odd = pattern(5000, 2);
  odd.fill(0, 0, 100);
  return [{ offset: 0, data: pattern(MiB, 1) }, { offset: MiB, data: zeros }, { offset: 6 * MiB + 1000, data: odd }];
}

/** Data bytes SEEK_DATA finds in a file (what it allocates, near enough). */
function dataBytes(fd: number, size: number): number {
  const runs = native!.mapData(fd, 0, size, 1 << 20);
  let n = 0;
  for (let i = 1; i < runs.length; i += 2) n += runs[i + 1]! - runs[i]!;
  return n;
}

for (const format of ['raw', 'qcow2'] as const) {
  test(`a ${format} source is copied into a raw target in the kernel: same bytes, written zeros left sparse`, async (t) => {
    if (!needNative(t) || !native!.copyFileRange) return;
    const tmp = await makeTmpDir();
    t.after(() => tmp.cleanup());
    const size = 8 * MiB;
    await makeSparseFile(tmp.path('src.raw'), size, sourceRuns());
    let srcName = tmp.path('src.raw');
    if (format === 'qcow2') {
      // The qcow2 holds the raw image's bytes, written zeros included, as data clusters.
      srcName = tmp.path('src.qcow2');
      await registry.get('qcow2').create!({ filename: srcName, size, options: {} });
      const [raw, q] = [await open(tmp.path('src.raw'), { format: 'raw', readOnly: true }), await open(srcName, { format: 'qcow2' })];
      const all = new Uint8Array(size);
      await raw.read(0, all);
      await q.write(0, all.subarray(0, 7 * MiB));
      await Promise.all([raw.close(), q.close()]);
    }
    await makeSparseFile(tmp.path('dst.raw'), size, []);
    const source = await open(srcName, { format, readOnly: true });
    const target = await open(tmp.path('dst.raw'), { format: 'raw' });
    try {
      const host = await HostCopy.create(target);
      assert.ok(host, 'a raw target on a file takes kernel copies');
      for await (const req of planCopy({ sources: [source], maxData: 2 * MiB })) {
        if (req.kind === 'data') assert.ok(host.route(req), `the data at ${req.offset} is copied in the kernel`);
      }
      await copyImage({ sources: [source], target, targetIsZero: true, sparseSize: 4 * KiB, inFlight: 4, outOfOrder: false, kernelCopy: true });
      assert.equal(dataBytes((target.file as FileNode).fd, size) <= MiB + 8 * KiB, true, 'the written zeros stay holes');
    } finally {
      await Promise.all([source.close(), target.close()]);
    }
    assertBytesEqual(readFileSync(tmp.path('dst.raw')), readFileSync(tmp.path('src.raw')), 'target');
  });
}

test('no kernel copies into a cache=none target, a read-only one or a qcow2 one with an external data file', async (t) => {
  if (!needNative(t) || !native!.copyFileRange) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  await makeSparseFile(tmp.path('a.raw'), MiB, []);
  await registry.get('qcow2').create!({ filename: tmp.path('a.qcow2'), size: MiB, options: {} });
  await registry.get('qcow2').create!({ filename: tmp.path('d.qcow2'), size: MiB, options: { data_file: tmp.path('d.data') } });
  const cases = [
    ['a.raw', { format: 'raw', cache: 'none' }], ['a.raw', { format: 'raw', readOnly: true }],
    ['a.qcow2', { format: 'qcow2', cache: 'none' }], ['d.qcow2', { format: 'qcow2' }],
  ] as const;
  const plain = await open(tmp.path('a.qcow2'), { format: 'qcow2' });
  try {
    assert.equal(await HostCopy.create(plain), undefined, 'a qcow2 target only when allocating copies are asked for');
    assert.ok(await HostCopy.create(plain, { allocating: true }));
  } finally {
    await plain.close();
  }
  for (const [name, opts] of cases) {
    const node = await open(tmp.path(name), opts);
    try {
      assert.equal(await HostCopy.create(node, { allocating: true }), undefined, `${name} ${JSON.stringify(opts)}`);
    } finally {
      await node.close();
    }
  }
});

for (const [options, what] of [
  ['cluster_size=65536', '64 KiB clusters'],
  ['cluster_size=2097152', '2 MiB clusters'],
  ['cluster_size=2097152,extended_l2=on', '2 MiB clusters with extended L2'],
  ['cluster_size=65536,extended_l2=on', '64 KiB clusters with extended L2'],
] as const) {
  test(`a raw source is copied into a new qcow2 (${what}) in the kernel: same bytes, zeros unallocated as through memory, clean`, async (t) => {
    if (!needNative(t) || !native!.copyFileRange) return;
    const tmp = await makeTmpDir();
    t.after(() => tmp.cleanup());
    const size = 8 * MiB;
    await makeSparseFile(tmp.path('src.raw'), size, sourceRuns());
    const opts = Object.fromEntries(options.split(',').map((o) => o.split('=')));
    const copies = [];
    for (const kernelCopy of [true, false]) {
      const name = tmp.path(`dst-${kernelCopy}.qcow2`);
      await registry.get('qcow2').create!({ filename: name, size, options: opts });
      const source = await open(tmp.path('src.raw'), { format: 'raw', readOnly: true });
      const target = (await open(name, { format: 'qcow2' })) as Qcow2Node;
      let allocations = 0;
      const allocate = target.allocateHostRange.bind(target);
      target.allocateHostRange = (offset, length) => {
        allocations++;
        return allocate(offset, length);
      };
      try {
        // -m 1 for the comparison: allocation order, so host offsets, are the same both ways.
        await copyImage({ sources: [source], target, targetIsZero: true, sparseSize: 4 * KiB, inFlight: 1, outOfOrder: false, kernelCopy, allocatingKernelCopy: true });
        assert.equal(allocations > 0, kernelCopy, 'the kernel copy allocates through the driver');
        const r = await target.check();
        assert.deepEqual([r.corruptions, r.leaks, r.checkErrors], [0, 0, 0], r.messages.join('; '));
        const map = [];
        for await (const e of target.extents(0, size)) map.push({ offset: e.offset, length: e.length, data: e.data, zero: e.zero });
        copies.push(map);
        const got = new Uint8Array(size);
        await target.read(0, got);
        const want = new Uint8Array(size);
        await source.read(0, want);
        assertBytesEqual(got, want, `${what}, kernel copy ${kernelCopy}`);
      } finally {
        await Promise.all([source.close(), target.close()]);
      }
    }
    assert.deepEqual(copies[0], copies[1], 'the same allocation as the copy through memory (host offsets aside: tables come first, as in QEMU)');
  });
}

test('into a qcow2 that holds data: its own clusters are written in place, compressed ones the ordinary way', async (t) => {
  if (!needNative(t) || !native!.copyFileRange) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const size = 8 * MiB;
  await makeSparseFile(tmp.path('src.raw'), size, [{ offset: 0, data: pattern(4 * MiB, 7) }]);
  await registry.get('qcow2').create!({ filename: tmp.path('dst.qcow2'), size, options: {} });
  const target = (await open(tmp.path('dst.qcow2'), { format: 'qcow2' })) as Qcow2Node;
  const source = await open(tmp.path('src.raw'), { format: 'raw', readOnly: true });
  try {
    await target.write(0, pattern(MiB, 8));
    await target.writeCompressed(2 * MiB, new Uint8Array(64 * KiB).fill(5));
    await target.write(6 * MiB, pattern(MiB, 9));
    const before = await target.blockStatus(0, MiB);
    await copyImage({ sources: [source], target, targetIsZero: false, sparseSize: 4 * KiB, inFlight: 4, outOfOrder: true, kernelCopy: true, allocatingKernelCopy: true });
    assert.equal((await target.blockStatus(0, MiB)).hostOffset, before.hostOffset, 'written in place');
    const got = new Uint8Array(size);
    await target.read(0, got);
    const want = new Uint8Array(size);
    await source.read(0, want);
    assertBytesEqual(got, want, 'target');
    const r = await target.check();
    assert.deepEqual([r.corruptions, r.leaks, r.checkErrors], [0, 0, 0], r.messages.join('; '));
  } finally {
    await Promise.all([source.close(), target.close()]);
  }
});
