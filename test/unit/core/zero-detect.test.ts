import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { isAllZero, zeroBuffer } from '../../../src/core/zero-detect.js';
import { nativeStatus } from '../../../src/native/index.js';

// Sizes around the JS chunk (64 KiB), the native threshold (16 KiB) and its 4 KiB chunks.
const SIZES = [...Array(130).keys(), 4095, 4096, 4097, 16383, 16384, 16385, 65535, 65536, 65537, 3 * 65536 + 5];

function positions(size: number): number[] {
  if (size <= 4097) return [...Array(size).keys()];
  // Every byte near each end and near each chunk boundary, plus a stride through the rest.
  const out = new Set<number>();
  for (let i = 0; i < size; i += 997) out.add(i);
  for (const b of [0, 4096, 8192, 16384, 65536, 131072, 196608, size]) {
    for (let d = -70; d <= 70; d++) if (b + d >= 0 && b + d < size) out.add(b + d);
  }
  return [...out];
}

test(`isAllZero finds one non-zero byte at any position, at any size and alignment (native: ${nativeStatus.loaded})`, () => {
  const backing = new Uint8Array(3 * 65536 + 5 + 64);
  for (const size of SIZES) {
    for (const shift of [0, 1, 3, 7, 8, 63]) {
      const view = backing.subarray(shift, shift + size);
      assert.equal(isAllZero(view), true, `zero view of ${size} at +${shift}`);
      for (const p of positions(size)) {
        for (const value of [1, 0x80, 0xff]) {
          view[p] = value;
          if (isAllZero(view)) assert.fail(`byte ${value} at ${p} of ${size} (+${shift}) missed`);
          view[p] = 0;
        }
      }
    }
  }
});

test('isAllZero ignores bytes outside the view', () => {
  const buf = new Uint8Array(70_000).fill(1);
  buf.fill(0, 5, 69_995);
  assert.equal(isAllZero(buf.subarray(5, 69_995)), true);
  assert.equal(isAllZero(buf.subarray(4, 69_995)), false);
  assert.equal(isAllZero(buf.subarray(5, 69_996)), false);
  assert.equal(isAllZero(new Uint8Array(0)), true);
  assert.equal(isAllZero(Buffer.alloc(20_000)), true);
});

test('zeroBuffer returns zeros of the asked length', () => {
  for (const n of [0, 1, 4096, 65536, 65537, 1 << 20]) {
    const z = zeroBuffer(n);
    assert.equal(z.byteLength, n);
    assert.equal(isAllZero(z), true);
  }
});

// The pure-JS path only runs without the addon: run this file again with it disabled.
test('the same checks pass without the native addon', { skip: !nativeStatus.loaded || process.env.VDISK_NO_NATIVE === '1' }, () => {
  const file = fileURLToPath(import.meta.url);
  // Without the runner's NODE_TEST_CONTEXT, so the child reports plainly instead of to a parent.
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=tap', file], {
    env: { ...env, VDISK_NO_NATIVE: '1' },
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /native: false/);
});
