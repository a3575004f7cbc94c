import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compressCluster, decompressCluster } from '../../../../../src/drivers/format/qcow2/compression.js';
import { DeflatePool } from '../../../../../src/drivers/format/qcow2/deflate-pool.js';
import { assertBytesEqual, pattern } from '../../../../helpers/bytes.js';
import { textBytes } from '../../../../helpers/text-bytes.js';

const KiB = 1024;

/** Clusters end to end: text (compresses), random (does not), zeros, and text again, repeated. */
function mixed(clusters: number, cs: number): Uint8Array {
  const out = new Uint8Array(clusters * cs);
  for (let i = 0; i < clusters; i++) {
    const kind = i % 4;
    if (kind === 0 || kind === 3) out.set(textBytes(cs, i), i * cs);
    else if (kind === 1) out.set(pattern(cs, i), i * cs);
  }
  return out;
}

for (const cs of [512, 64 * KiB, 2048 * KiB]) {
  test(`${cs}-byte clusters: each cluster deflated as compressCluster does, null where it does not compress`, async (t) => {
    const pool = new DeflatePool(2);
    t.after(() => pool.close());
    // 19 clusters: batches of 8, 8 and 3, over two workers.
    const data = mixed(19, cs);
    const out = await pool.compressClusters(data, cs);
    assert.equal(out.length, 19);
    for (let i = 0; i < 19; i++) {
      const cluster = data.subarray(i * cs, (i + 1) * cs);
      const expected = await compressCluster('zlib', cluster);
      const got = out[i]!;
      if (expected === null) {
        assert.equal(got, null, `cluster ${i} does not compress`);
        continue;
      }
      assert.ok(got !== null, `cluster ${i} compresses`);
      assertBytesEqual(got, expected, `cluster ${i}: the same deflate stream`);
      assertBytesEqual(await decompressCluster('zlib', got, cs), cluster, `cluster ${i} inflates back`);
    }
  });
}

test('calls at once, and buffers reused between them, keep every result with its own cluster', async (t) => {
  const pool = new DeflatePool(3);
  t.after(() => pool.close());
  const cs = 4 * KiB;
  const inputs = Array.from({ length: 12 }, (_, k) => {
    const d = textBytes((k + 1) * cs, 100 + k);
    // A different length each time, so reused batch buffers are longer than the batch.
    d.set(pattern(cs, k), k * cs);
    return d;
  });
  for (let round = 0; round < 2; round++) {
    const outs = await Promise.all(inputs.map((d) => pool.compressClusters(d, cs)));
    for (const [k, out] of outs.entries()) {
      assert.equal(out.length, k + 1);
      for (let i = 0; i < k; i++) {
        assertBytesEqual(await decompressCluster('zlib', out[i]!, cs), inputs[k]!.subarray(i * cs, (i + 1) * cs), `input ${k} cluster ${i}`);
      }
      assert.equal(out[k], null, `input ${k}: its last cluster is random`);
    }
  }
});

test('the caller may change its buffer as soon as the call returns', async (t) => {
  const pool = new DeflatePool(1);
  t.after(() => pool.close());
  const cs = 64 * KiB;
  const data = textBytes(2 * cs, 7);
  const expected = Uint8Array.from(data);
  const pending = pool.compressClusters(data, cs);
  data.fill(0xff);
  const out = await pending;
  assertBytesEqual(await decompressCluster('zlib', out[0]!, cs), expected.subarray(0, cs), 'first cluster');
  assertBytesEqual(await decompressCluster('zlib', out[1]!, cs), expected.subarray(cs), 'second cluster');
});
