import assert from 'node:assert/strict';
import { test } from 'node:test';
import { skipReason, stack } from '../helpers/stacks.js';
import { checkStack, scaled } from './concurrent-model.js';

// All-zero writes (one write in ten in the sequences) turn into zero writes, unaligned ones
// included, and must still land exactly like data writes.
for (const [name, mode] of [['raw-over-file-4k', 'unmap'], ['file', 'unmap'], ['memory', 'on'], ['raw-slice-over-file-4k', 'on']] as const) {
  test(`${name} with detect-zeroes=${mode} matches the model`, { skip: skipReason(stack(name)) }, async () => {
    const want = scaled(500);
    assert.equal(await checkStack(stack(name), want, { detectZeroes: mode }), want);
  });
}
