import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  allocationIsData, allocationIsZero, depthIsPresent, encodeAllocationDepth, encodeAllocationStatus,
} from '../../../../src/nbd/protocol.js';

test('base:allocation words are the spec\'s: 0 data, 3 hole+zero, 2 allocated zeros, 1 hole', () => {
  const cases = [
    { data: true, zero: false, status: 0 },
    { data: false, zero: true, status: 3 },
    { data: true, zero: true, status: 2 },
    { data: false, zero: false, status: 1 },
  ];
  for (const { data, zero, status } of cases) {
    assert.equal(encodeAllocationStatus({ data, zero }), status);
    assert.deepEqual([allocationIsData(status), allocationIsZero(status)], [data, zero], `status ${status}`);
  }
  // Reserved bits are ignored on receipt.
  assert.deepEqual([allocationIsData(0xfffc), allocationIsZero(0xfffc)], [true, false]);
});

test('qemu:allocation-depth: 0 nowhere in the chain, 1 this image, n+1 the n-th backing file', () => {
  assert.equal(encodeAllocationDepth({ present: false, depth: 0 }), 0);
  assert.equal(encodeAllocationDepth({ present: true, depth: 0 }), 1);
  assert.equal(encodeAllocationDepth({ present: true, depth: 2 }), 3);
  assert.equal(depthIsPresent(0), false);
  assert.equal(depthIsPresent(3), true);
});
