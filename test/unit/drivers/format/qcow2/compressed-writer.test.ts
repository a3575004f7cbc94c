import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import { test } from 'node:test';
import type { Qcow2Node } from '../../../../../src/drivers/format/qcow2/qcow2-node.js';
import { open } from '../../../../../src/registry/index.js';
import { assertClean, newQcow2, readAll } from '../../../../helpers/qcow2-node.js';
import { assertBytesEqual, pattern } from '../../../../helpers/bytes.js';
import { textBytes } from '../../../../helpers/text-bytes.js';

const KiB = 1024;

for (const type of ['zlib', 'zstd'] as const) {
  for (const cs of [512, 4 * KiB, 64 * KiB, 2048 * KiB]) {
    test(`${type}, ${cs}-byte clusters: compressed clusters read back, pack into shared host clusters, and check clean`, async (t) => {
      // An image whose size is not a multiple of the cluster size: its last cluster is short.
      const size = 12 * cs + 1536;
      const img = await newQcow2(t, `cluster_size=${cs},compression_type=${type}`, size);
      const created = (await stat(img.path)).size;
      const node = await img.node();
      const data = textBytes(size, cs);
      await node.writeCompressed(0, data.subarray(0, 4 * cs));
      await node.writeCompressed(6 * cs, data.subarray(6 * cs));
      assertBytesEqual(await readAll(node, 0, 4 * cs), data.subarray(0, 4 * cs), 'first run');
      assertBytesEqual(await readAll(node, 4 * cs, 2 * cs), new Uint8Array(2 * cs), 'the gap reads as zeros');
      assertBytesEqual(await readAll(node, 6 * cs, size - 6 * cs), data.subarray(6 * cs), 'second run, to the short last cluster');
      assert.equal((await node.blockStatus(0, cs)).compressed, true, 'block status says compressed');
      const r = await node.check();
      assert.deepEqual([r.corruptions, r.leaks, r.checkErrors], [0, 0, 0], r.messages.join('; '));
      const clusters = 4 + Math.ceil((size - 6 * cs) / cs);
      assert.equal(r.compressedClusters, clusters);
      await node.close();
      const file = (await stat(img.path)).size;
      assert.equal(file % 512, 0, `the file ends on a sector (${file})`);
      // Text compresses to a fifth or so and the compressed clusters share host clusters: with an
      // L2 table and the rest, the file grows by far less than half the clusters written. (512
      // bytes of text compress to half; the L2 table and refcount block weigh more there.)
      if (cs >= 4 * KiB) assert.ok(file - created < (clusters * cs) / 2, `${clusters} compressed clusters of ${cs} bytes grew the file by ${file - created}`);
      const again = await img.node();
      assertBytesEqual(await readAll(again, 0, size), Uint8Array.from(data, (b, i) => (i >= 4 * cs && i < 6 * cs ? 0 : b)), 'after reopening');
      await again.close();
    });
  }
}

test('a cluster that does not compress is written as it is, as QEMU does', async (t) => {
  const img = await newQcow2(t, 'cluster_size=64k', 1024 * KiB);
  const node = await img.node();
  const random = pattern(64 * KiB, 5);
  const text = textBytes(64 * KiB, 6);
  await node.writeCompressed(0, Uint8Array.from([...random, ...text]));
  assert.notEqual((await node.blockStatus(0, 64 * KiB)).compressed, true);
  assert.equal((await node.blockStatus(64 * KiB, 64 * KiB)).compressed, true);
  assertBytesEqual(await readAll(node, 0, 64 * KiB), random, 'random cluster');
  assertBytesEqual(await readAll(node, 64 * KiB, 64 * KiB), text, 'text cluster');
  await assertClean(node, 'mixed');
  await node.close();
});

test('compressed writes refuse what QEMU refuses: unaligned, partial, allocated, external data file, read-only', async (t) => {
  const img = await newQcow2(t, 'cluster_size=4k', 64 * KiB);
  const node = await img.node();
  const text = textBytes(8 * KiB, 1);
  await assert.rejects(node.writeCompressed(512, text.subarray(0, 4 * KiB)), { code: 'EINVAL', message: /cluster boundary/ });
  await assert.rejects(node.writeCompressed(0, text.subarray(0, 3 * KiB)), { code: 'EINVAL', message: /whole clusters/ });
  await assert.rejects(node.writeCompressed(60 * KiB, text), { code: 'ERANGE' });
  await node.write(0, text.subarray(0, 4 * KiB));
  await assert.rejects(node.writeCompressed(0, text.subarray(0, 4 * KiB)), { code: 'EIO', message: /allocated/ });
  await node.writeCompressed(4 * KiB, text.subarray(0, 4 * KiB));
  await assert.rejects(node.writeCompressed(4 * KiB, text.subarray(4 * KiB)), { code: 'EIO', message: /allocated/ });
  // A zeroed (unmapped) cluster holds nothing again and takes a compressed cluster.
  await node.writeZeroes(0, 8 * KiB, { mayUnmap: true });
  await node.writeCompressed(0, text);
  assertBytesEqual(await readAll(node, 0, 8 * KiB), text, 'after zeroing and writing again');
  await assertClean(node, 'after refusals');
  await node.close();
  const ro = (await open(img.path, { format: 'qcow2', readOnly: true })) as Qcow2Node;
  await assert.rejects(ro.writeCompressed(16 * KiB, text), { code: 'EROFS' });
  await ro.close();

  const ext = await newQcow2(t, `data_file=${img.path}.data,cluster_size=4k`, 64 * KiB);
  const withData = await ext.node();
  await assert.rejects(withData.writeCompressed(0, text), { code: 'ENOTSUP', message: /external data file/ });
  await withData.close();
});

test('ordinary writes over compressed clusters, and compressed bytes after freed ones, keep the refcounts right', async (t) => {
  const img = await newQcow2(t, 'cluster_size=4k', 256 * KiB);
  const node = await img.node();
  const a = textBytes(4 * KiB, 11);
  // One compressed cluster alone in its host cluster, then overwritten: the host cluster is
  // freed at the flush, and the next allocation may take it for ordinary data. Compressed bytes
  // written after that must not be packed into it.
  await node.writeCompressed(0, a);
  const b = pattern(4 * KiB, 12);
  await node.write(0, b);
  await node.flush();
  const c = pattern(4 * KiB, 13);
  await node.write(8 * KiB, c);
  const d = textBytes(16 * KiB, 14);
  await node.writeCompressed(16 * KiB, d);
  assertBytesEqual(await readAll(node, 0, 4 * KiB), b, 'overwritten compressed cluster');
  assertBytesEqual(await readAll(node, 8 * KiB, 4 * KiB), c, 'ordinary data in the freed cluster');
  assertBytesEqual(await readAll(node, 16 * KiB, 16 * KiB), d, 'compressed after the free');
  await assertClean(node, 'after frees');
  // A partial ordinary write into a compressed cluster: copy-on-write from the decompressed bytes.
  await node.write(17 * KiB, pattern(100, 15));
  const expected = d.slice();
  expected.set(pattern(100, 15), KiB);
  assertBytesEqual(await readAll(node, 16 * KiB, 16 * KiB), expected, 'copy-on-write of a compressed cluster');
  await assertClean(node, 'after copy-on-write');
  await node.close();
});

test('with 1-bit refcounts every compressed cluster gets a host cluster of its own', async (t) => {
  const img = await newQcow2(t, 'cluster_size=4k,refcount_bits=1', 64 * KiB);
  const node = await img.node();
  const data = textBytes(32 * KiB, 21);
  await node.writeCompressed(0, data);
  assertBytesEqual(await readAll(node, 0, 32 * KiB), data, 'readback');
  await assertClean(node, '1-bit refcounts');
  await node.close();
});
