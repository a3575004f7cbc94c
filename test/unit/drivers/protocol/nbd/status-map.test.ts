import assert from 'node:assert/strict';
import { test } from 'node:test';
import { toExtents } from '../../../../../src/drivers/protocol/nbd/status-map.js';

const row = (e: { offset: number; length: number; data: boolean; zero: boolean; present: boolean }) => [e.offset, e.length, e.data, e.zero, e.present];

test('base:allocation flags become data/zero/present as QEMU reads them, clipped and merged', () => {
  const list = toExtents(1000, 5000, [
    { length: 1000, flags: 0 }, { length: 500, flags: 0 }, { length: 1000, flags: 3 }, { length: 1000, flags: 2 },
    { length: 1000, flags: 1 }, { length: 9000, flags: 0 },
  ], undefined, 'nbd://h:1/e');
  assert.deepEqual(list.map(row), [
    [1000, 1500, true, false, true], [2500, 1000, false, true, true], [3500, 1000, true, true, true],
    [4500, 1000, false, false, false], [5500, 500, true, false, true],
  ]);
  assert.deepEqual(list.map((e) => [e.hostOffset, e.hostFile, e.depth]), list.map((e) => [e.offset, 'nbd://h:1/e', 0]));
});

test('qemu:allocation-depth splits runs where the two contexts disagree; depth 0 is not present', () => {
  const list = toExtents(0, 4096, [{ length: 3072, flags: 3 }, { length: 1024, flags: 0 }],
    [{ length: 1024, flags: 0 }, { length: 4096, flags: 2 }], 'f');
  assert.deepEqual(list.map(row), [[0, 1024, false, true, false], [1024, 2048, false, true, true], [3072, 1024, true, false, true]]);
});

test('answers shorter than asked cover what they cover', () => {
  assert.deepEqual(toExtents(0, 1 << 20, [{ length: 512, flags: 0 }], undefined, 'f').map(row), [[0, 512, true, false, true]]);
  assert.deepEqual(toExtents(0, 1 << 20, [{ length: 4096, flags: 0 }], [{ length: 100, flags: 1 }], 'f').map(row), [[0, 100, true, false, true]]);
});
