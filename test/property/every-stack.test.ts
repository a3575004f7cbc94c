import assert from 'node:assert/strict';
import { test } from 'node:test';
import { skipReason, stacks } from '../helpers/stacks.js';
import { checkStack, scaled } from './concurrent-model.js';

for (const s of stacks) {
  if (s.name === 'raw-over-file-4k') continue; // has its own, longer run
  test(`${s.name} matches the model under concurrent operation sequences`, { skip: skipReason(s) }, async () => {
    const want = scaled(500);
    assert.equal(await checkStack(s, want), want);
  });
}
