import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decompressCluster } from '../../../../../src/drivers/format/qcow2/compression.js';
import { ZstdPool } from '../../../../../src/drivers/format/qcow2/zstd-pool.js';
import { assertBytesEqual } from '../../../../helpers/bytes.js';
import { textBytes } from '../../../../helpers/text-bytes.js';

test('many clusters at once, over a few workers: each frame decodes to its cluster, and the input is left as it was', async (t) => {
  const pool = new ZstdPool(2);
  t.after(() => pool.close());
  const buffer = textBytes(32 * 65536, 7);
  const before = buffer.slice();
  const clusters = Array.from({ length: 32 }, (_, i) => buffer.subarray(i * 65536, (i + 1) * 65536));
  const frames = await Promise.all(clusters.map((c) => pool.compress(c, 3)));
  assertBytesEqual(buffer, before, 'input untouched (copied to the workers, not moved)');
  for (const [i, frame] of frames.entries()) {
    assert.ok(frame.byteLength < 65536 / 2, `cluster ${i} compressed to ${frame.byteLength}`);
    assertBytesEqual(await decompressCluster('zstd', frame, 65536), clusters[i]!, `cluster ${i}`);
  }
});
