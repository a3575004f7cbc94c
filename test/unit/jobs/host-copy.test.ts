import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
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

test('no kernel copies into a cache=none target, a read-only one or a qcow2 one', async (t) => {
  if (!needNative(t) || !native!.copyFileRange) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  await makeSparseFile(tmp.path('a.raw'), MiB, []);
  await registry.get('qcow2').create!({ filename: tmp.path('a.qcow2'), size: MiB, options: {} });
  for (const [name, opts] of [['a.raw', { format: 'raw', cache: 'none' }], ['a.raw', { format: 'raw', readOnly: true }], ['a.qcow2', { format: 'qcow2' }]] as const) {
    const node = await open(tmp.path(name), opts);
    try {
      assert.equal(await HostCopy.create(node), undefined, `${name} ${JSON.stringify(opts)}`);
    } finally {
      await node.close();
    }
  }
});
