import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sparseRuns, sparseRunsInJs } from '../../../src/jobs/sparse-runs.js';
import { native } from '../../../src/native/index.js';
import { pattern } from '../../helpers/bytes.js';

const KiB = 1024;
const runs = (buf: Uint8Array, offset: number, granule: number, min: number) =>
  sparseRuns(buf, offset, granule, min).map((r) => [r.offset, r.length, r.zero ? 'zero' : 'data']);

test('all zero is one zero run; no zero block is one data run', () => {
  assert.deepEqual(runs(new Uint8Array(64 * KiB), 0, 4 * KiB, 4 * KiB), [[0, 64 * KiB, 'zero']]);
  assert.deepEqual(runs(pattern(64 * KiB, 1), 512, 4 * KiB, 4 * KiB), [[512, 64 * KiB, 'data']]);
  assert.deepEqual(runs(new Uint8Array(0), 0, 4 * KiB, 4 * KiB), []);
});

test('zero blocks are found on boundaries aligned in the target, not in the buffer', () => {
  // The buffer starts 1 KiB into a block: target block [4k, 8k) is buffer bytes [3k, 7k).
  const buf = pattern(16 * KiB, 2);
  buf.fill(0, 3 * KiB, 7 * KiB);
  assert.deepEqual(runs(buf, 1 * KiB, 4 * KiB, 4 * KiB), [[1 * KiB, 3 * KiB, 'data'], [4 * KiB, 4 * KiB, 'zero'], [8 * KiB, 9 * KiB, 'data']]);
  // The same zeros one byte off the block are not a whole block.
  assert.deepEqual(runs(buf, 1 * KiB + 1, 4 * KiB, 4 * KiB), [[1 * KiB + 1, 16 * KiB, 'data']]);
});

test('inside the buffer, zero runs shorter than the minimum are written; at its ends they never are', () => {
  const buf = pattern(64 * KiB, 3);
  buf.fill(0, 0, 4 * KiB);
  buf.fill(0, 16 * KiB, 20 * KiB);
  buf.fill(0, 32 * KiB, 40 * KiB);
  buf.fill(0, 60 * KiB, 64 * KiB);
  assert.deepEqual(runs(buf, 0, 4 * KiB, 8 * KiB), [
    [0, 4 * KiB, 'zero'], [4 * KiB, 28 * KiB, 'data'], [32 * KiB, 8 * KiB, 'zero'], [40 * KiB, 20 * KiB, 'data'], [60 * KiB, 4 * KiB, 'zero'],
  ]);
});

test('a partial block at either end counts as a block of its own', () => {
  const buf = pattern(10 * KiB, 4);
  buf.fill(0, 0, 1 * KiB);
  buf.fill(0, 9 * KiB);
  assert.deepEqual(runs(buf, 3 * KiB, 4 * KiB, 4 * KiB), [[3 * KiB, 1 * KiB, 'zero'], [4 * KiB, 8 * KiB, 'data'], [12 * KiB, 1 * KiB, 'zero']]);
});

test('the addon finds the same runs as the JS scan, over random buffers, offsets, blocks and minimums', (t) => {
  if (!native?.zeroRuns) return t.skip('native addon without zeroRuns');
  const random = lcg(6);
  for (let i = 0; i < 500; i++) {
    const granule = 512 * 2 ** Math.floor(random() * 5);
    const buf = pattern(1 + Math.floor(random() * 40 * KiB), i);
    // Zero runs of random lengths at random places, some a byte off a block boundary.
    for (let z = Math.floor(random() * 6); z > 0; z--) {
      const start = Math.floor(random() * buf.byteLength);
      buf.fill(0, start, start + Math.floor(random() * 12 * KiB));
    }
    const offset = Math.floor(random() * 3 * granule);
    const minZero = [0, granule, 2 * granule, 8 * KiB][Math.floor(random() * 4)]!;
    assert.deepEqual(sparseRuns(buf, offset, granule, minZero), sparseRunsInJs(buf, offset, granule, minZero), `case ${i}`);
  }
});

function lcg(seed: number): () => number {
  let x = seed;
  return () => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
}
