import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compareImages } from '../../../src/jobs/compare.js';
import { pattern } from '../../helpers/bytes.js';
import { ScriptedSource } from './copy-nodes.js';

const KiB = 1024;

test('the same bytes laid out differently (data vs zero extents, other boundaries) are identical', async () => {
  const d = pattern(64 * KiB, 1);
  const withZeros = d.slice();
  withZeros.fill(0, 16 * KiB, 32 * KiB);
  const a = new ScriptedSource([{ data: withZeros }, { zero: 64 * KiB }]);
  const b = new ScriptedSource([{ data: d.slice(0, 16 * KiB) }, { zero: 16 * KiB, present: false }, { data: d.slice(32 * KiB) }, { data: new Uint8Array(64 * KiB) }], { batch: 2 });
  assert.deepEqual(await compareImages(a, b), { kind: 'identical', sizeMismatch: false });
});

test('the mismatch offset is the first differing 512-byte sector', async () => {
  const d = pattern(3 * 1024 * KiB, 2);
  const e = d.slice();
  e[2 * 1024 * KiB + 700] ^= 1; // in the second 2 MiB read, inside sector 1
  const a = new ScriptedSource([{ data: d }]);
  assert.deepEqual(await compareImages(a, new ScriptedSource([{ data: e }])), { kind: 'content', offset: 2 * 1024 * KiB + 512, sizeMismatch: false });
  // Data in one image where the other has nothing allocated: the first non-zero sector.
  const sparse = new Uint8Array(8 * KiB);
  sparse[5000] = 9;
  assert.deepEqual(await compareImages(new ScriptedSource([{ zero: 8 * KiB, present: false }]), new ScriptedSource([{ data: sparse }])),
    { kind: 'content', offset: 4608, sizeMismatch: false });
});

test("a longer image's tail must read as zeros; strict mode wants equal sizes and equal block status", async () => {
  const d = pattern(8 * KiB, 3);
  const short = new ScriptedSource([{ data: d }]);
  const zeroTail = new ScriptedSource([{ data: d }, { data: new Uint8Array(4 * KiB) }, { zero: 4 * KiB }]);
  const tail = new Uint8Array(8 * KiB);
  tail[6000] = 1;
  const dataTail = new ScriptedSource([{ data: d }, { data: tail }]);
  assert.deepEqual(await compareImages(short, zeroTail), { kind: 'identical', sizeMismatch: true });
  assert.deepEqual(await compareImages(dataTail, short), { kind: 'content', offset: 8 * KiB + 5632, sizeMismatch: true });
  assert.deepEqual(await compareImages(short, zeroTail, { strict: true }), { kind: 'strict-size' });
  const holes = new ScriptedSource([{ data: d }, { zero: 8 * KiB }]);
  const unallocated = new ScriptedSource([{ data: d }, { zero: 8 * KiB, present: false }]);
  assert.deepEqual(await compareImages(holes, unallocated), { kind: 'identical', sizeMismatch: false });
  assert.deepEqual(await compareImages(holes, unallocated, { strict: true }), { kind: 'strict-status', offset: 8 * KiB });
});

test('read failures name the image and offset', async () => {
  const a = new ScriptedSource([{ data: pattern(8 * KiB, 1) }], { failReadAt: 4 * KiB });
  const b = new ScriptedSource([{ data: pattern(8 * KiB, 1) }]);
  await assert.rejects(compareImages(a, b, { names: ['one.img', 'two.img'] }), (err: Error & { stage?: string }) =>
    err.stage === 'read' && err.message === 'Error while reading offset 0 of one.img: Input/output error');
});
