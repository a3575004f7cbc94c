import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { queuedRead, queuedWrite } from '../../../../../src/drivers/protocol/file/io-queue.js';
import { fromSystemError } from '../../../../../src/core/errors.js';
import { pattern } from '../../../../helpers/bytes.js';
import { needNative } from '../../../../helpers/native.js';
import { makeTmpDir } from '../../../../helpers/tmp.js';

test('requests of one turn, over several files, each move their own bytes', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const files = [tmp.path('a'), tmp.path('b'), tmp.path('c')];
  const contents = files.map((f, i) => {
    const data = pattern(256 * 1024, i + 1);
    writeFileSync(f, data);
    return data;
  });
  const fds = files.map((f) => openSync(f, 'r+'));
  t.after(() => fds.forEach((fd) => closeSync(fd)));
  // 3 files × 40 reads of 4 KiB, all issued before any completes: more than there are threads.
  const reads = fds.flatMap((fd, f) => Array.from({ length: 40 }, (_, i) => {
    const at = ((i * 7919) % 64) * 4096;
    const buf = new Uint8Array(4096);
    return queuedRead(fd, buf, at).then((n) => ({ n, buf, f, at }));
  }));
  for (const { n, buf, f, at } of await Promise.all(reads)) {
    assert.equal(n, 4096);
    assert.deepEqual(buf, contents[f]!.subarray(at, at + 4096));
  }
  // Writes and reads of different ranges in one turn.
  const fresh = pattern(8192, 99);
  await Promise.all([queuedWrite(fds[0]!, fresh, 12288), queuedRead(fds[1]!, new Uint8Array(512), 0)]);
  assert.deepEqual(new Uint8Array(readFileSync(files[0]!)).subarray(12288, 12288 + 8192), fresh);
});

test('a read across end of file stops there and says how much it read', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  writeFileSync(tmp.path('short'), pattern(5000, 3));
  const fd = openSync(tmp.path('short'), 'r');
  t.after(() => closeSync(fd));
  const buf = new Uint8Array(8192);
  assert.equal(await queuedRead(fd, buf, 4096), 904);
  assert.deepEqual(buf.subarray(0, 904), pattern(5000, 3).subarray(4096));
  assert.equal(await queuedRead(fd, new Uint8Array(16), 1 << 20), 0);
});

test('a failing request rejects with an errno-shaped error; the others still succeed', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  writeFileSync(tmp.path('ro'), pattern(4096, 5));
  const fd = openSync(tmp.path('ro'), 'r');
  t.after(() => closeSync(fd));
  // Both in one turn; they may complete in either order, so both are awaited together.
  const [ok, bad] = await Promise.allSettled([queuedRead(fd, new Uint8Array(4096), 0), queuedWrite(fd, new Uint8Array(4096), 0)]);
  assert.deepEqual(ok, { status: 'fulfilled', value: 4096 });
  assert.equal(bad.status, 'rejected');
  await assert.rejects(Promise.reject((bad as PromiseRejectedResult).reason), (err: NodeJS.ErrnoException) => {
    assert.equal(err.code, 'EBADF');
    assert.equal(err.syscall, 'pwrite');
    const wrapped = fromSystemError(err, { op: 'write', path: 'ro' });
    assert.equal(wrapped.message, "Could not write 'ro': Bad file descriptor");
    return true;
  });
  assert.deepEqual(new Uint8Array(readFileSync(tmp.path('ro'))), pattern(4096, 5));
});
