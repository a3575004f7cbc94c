import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { queuedMap, queuedMapData, queuedRead, queuedWrite } from '../../../../../src/drivers/protocol/file/io-queue.js';
import { native } from '../../../../../src/native/index.js';
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

test('large reads, split into pieces for several threads, join into one result', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  // 3 MiB + 5000 bytes: reads that end inside their last piece, at a piece's start, or past the file.
  const size = 3 * 1024 * 1024 + 5000;
  const data = pattern(size, 7);
  writeFileSync(tmp.path('big'), data);
  const fd = openSync(tmp.path('big'), 'r');
  t.after(() => closeSync(fd));
  const cases = [
    { at: 0, length: 1024 * 1024 },
    { at: 4096, length: 2 * 1024 * 1024 + 8192 },
    { at: 2 * 1024 * 1024, length: 1024 * 1024 + 4096 }, // the file ends 904 bytes into the last piece
    { at: size - 300 * 1024, length: 1024 * 1024 }, // ends in the first piece; the others read nothing
    { at: size, length: 512 * 1024 },
    { at: size + 4096, length: 512 * 1024 },
  ];
  const reads = cases.map(({ at, length }) => {
    const buf = new Uint8Array(length).fill(0xee);
    return queuedRead(fd, buf, at).then((n) => ({ n, buf, at, length }));
  });
  for (const { n, buf, at, length } of await Promise.all(reads)) {
    const expected = Math.max(0, Math.min(length, size - at));
    assert.equal(n, expected, `read of ${length} at ${at}`);
    assert.deepEqual(buf.subarray(0, n), data.subarray(at, at + n));
    assert.ok(buf.subarray(n).every((b) => b === 0xee), 'nothing written past what was read');
  }
  // Many large reads at once into one shared buffer (qemu-img bench's pattern) all succeed.
  const shared = new Uint8Array(1024 * 1024);
  const counts = await Promise.all(Array.from({ length: 32 }, () => queuedRead(fd, shared, 1024 * 1024)));
  assert.deepEqual(counts, Array(32).fill(1024 * 1024));
  assert.deepEqual(shared, data.subarray(1024 * 1024, 2 * 1024 * 1024));
  // A stream of them, 64 in flight (pieces finishing on different threads in every order), each
  // checked: a lost or doubled completion hangs or fails here.
  let next = 0;
  const worker = async (): Promise<void> => {
    const buf = new Uint8Array(512 * 1024);
    for (let i = next++; i < 4096; i = next++) {
      const at = (i * 4096) % (size - buf.byteLength);
      assert.equal(await queuedRead(fd, buf, at), buf.byteLength);
      assert.equal(Buffer.compare(buf, data.subarray(at, at + buf.byteLength)), 0, `read ${i} at ${at}`);
    }
  };
  await Promise.all(Array.from({ length: 64 }, worker));
});

test('a large read that fails rejects once, with the errno of its pieces', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const fd = openSync(tmp.path('wo'), 'w');
  t.after(() => closeSync(fd));
  await assert.rejects(queuedRead(fd, new Uint8Array(1024 * 1024), 0), (err: NodeJS.ErrnoException) => {
    assert.equal(err.code, 'EBADF');
    assert.equal(err.syscall, 'pread');
    return true;
  });
});

test('a map request walks SEEK_DATA/SEEK_HOLE on the queue as mapData does on the caller\'s thread', async (t) => {
  if (!needNative(t)) return;
  assert.ok(queuedMap, 'the addon takes map requests');
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const file = tmp.path('sparse');
  const fd = openSync(file, 'w+');
  t.after(() => closeSync(fd));
  // Data at 1 MiB, 3 MiB and 5 MiB (64 KiB each) in an 8 MiB file.
  for (const at of [1, 3, 5]) await queuedWrite(fd, pattern(65536, at), at * 1024 * 1024);
  await queuedWrite(fd, new Uint8Array(1), 8 * 1024 * 1024 - 1);
  const size = 8 * 1024 * 1024;
  for (const [offset, runs] of [[0, 4096], [0, 2], [2 * 1024 * 1024, 1], [size, 4]] as const) {
    assert.deepEqual(await queuedMapData(fd, offset, size, runs, 0), native!.mapData(fd, offset, size, runs), `from ${offset}, ${runs} runs`);
  }
  // A descriptor that is not open: the error names the system call.
  await assert.rejects(queuedMapData(1 << 30, 0, size, 4, 0), (e: NodeJS.ErrnoException) => e.code === 'EBADF' && e.syscall === 'lseek');
});
