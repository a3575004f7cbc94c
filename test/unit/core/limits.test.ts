import assert from 'node:assert/strict';
import { test } from 'node:test';
import { alignDown, alignUp, defaultLimits, isPowerOfTwo } from '../../../src/core/limits.js';

test('alignDown and alignUp, also beyond 32 bits', () => {
  const cases: [number, number, number, number][] = [
    // n, align, down, up
    [0, 512, 0, 0], [1, 512, 0, 512], [511, 512, 0, 512], [512, 512, 512, 512], [513, 512, 512, 1024],
    [7, 1, 7, 7], [2 ** 32 + 1, 4096, 2 ** 32, 2 ** 32 + 4096], [2 ** 40 - 1, 2 ** 20, 2 ** 40 - 2 ** 20, 2 ** 40],
    [2 ** 53 - 4096, 4096, 2 ** 53 - 4096, 2 ** 53 - 4096], [2 ** 53 - 5000, 4096, 2 ** 53 - 8192, 2 ** 53 - 4096],
  ];
  for (const [n, a, down, up] of cases) {
    assert.equal(alignDown(n, a), down, `alignDown(${n}, ${a})`);
    assert.equal(alignUp(n, a), up, `alignUp(${n}, ${a})`);
  }
});

test('isPowerOfTwo', () => {
  for (let i = 0; i < 53; i++) assert.equal(isPowerOfTwo(2 ** i), true, `2^${i}`);
  for (const n of [0, -1, -2, 3, 6, 4095, 4097, 0.5, 1.5, NaN, Infinity, 2 ** 53 + 2, 2 ** 20 + 1]) {
    assert.equal(isPowerOfTwo(n), false, String(n));
  }
});

test('defaultLimits are consistent and take overrides', () => {
  const l = defaultLimits();
  assert.equal(l.requestAlignment, 1);
  assert.equal(l.memoryAlignment, 1);
  for (const k of ['maxTransfer', 'maxWriteZeroes', 'maxDiscard'] as const) {
    assert.ok(isPowerOfTwo(l[k]), k);
    assert.equal(l[k] % l.requestAlignment, 0, k);
  }
  const o = defaultLimits({ requestAlignment: 4096, maxTransfer: 65536 });
  assert.equal(o.requestAlignment, 4096);
  assert.equal(o.maxTransfer, 65536);
  assert.equal(o.maxDiscard, l.maxDiscard);
  assert.notEqual(defaultLimits(), defaultLimits(), 'each call returns a fresh object');
});
