import assert from 'node:assert/strict';
import { closeSync, openSync } from 'node:fs';
import { open, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { BlockError } from '../../../../../src/core/errors.js';
import { applyLocks, permissionsFor } from '../../../../../src/drivers/protocol/file/locking.js';
import { native } from '../../../../../src/native/index.js';
import { needNative } from '../../../../helpers/native.js';
import { makeTmpDir } from '../../../../helpers/tmp.js';

test('a lock held by a description that goes away at once is waited out; one that stays is refused', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const file = tmp.path('img');
  await writeFile(file, new Uint8Array(4096));
  const { perm, shared } = permissionsFor(true, true);
  // Another open file description of the same file conflicts like another process would. It
  // goes away right after the first look (before the first retry's timer can fire).
  const holder = openSync(file, 'r+');
  await applyLocks(native!, holder, file, perm, shared);
  const first = await open(file, 'r+');
  try {
    setImmediate(() => closeSync(holder));
    await applyLocks(native!, first.fd, file, perm, shared);
  } finally {
    await first.close();
  }
  const keeper = await open(file, 'r+');
  const second = await open(file, 'r+');
  try {
    await applyLocks(native!, keeper.fd, file, perm, shared);
    await assert.rejects(applyLocks(native!, second.fd, file, perm, shared), (err: unknown) => {
      assert.ok(err instanceof BlockError && err.code === 'E_LOCKED', String(err));
      assert.match(err.message, /^Failed to get "write" lock; is another process using the image \[.*img\]\?$/);
      return true;
    });
  } finally {
    await second.close();
    await keeper.close();
  }
});
