import assert from 'node:assert/strict';
import { test } from 'node:test';
import { stack } from '../helpers/stacks.js';
import { checkStack, scaled } from './concurrent-model.js';

// The headline run: every unaligned request becomes a read-modify-write of 4 KiB blocks, and
// concurrent requests in one block must be serialised or they lose each other's bytes.
test('raw over a 4 KiB-aligned file matches the model over 10,000 concurrent sequences', async (t) => {
  const want = scaled(10_000);
  const runs = await checkStack(stack('raw-over-file-4k'), want);
  assert.equal(runs, want);
  t.diagnostic(`property runs (raw-over-file-4k): ${runs}`);
});
