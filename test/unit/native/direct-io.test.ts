/**
 * The addon's O_DIRECT helpers (native/direct-io.cc) and sync_file_range (native/writeback.cc),
 * on real files in the temporary directory.
 */
import assert from 'node:assert/strict';
import { closeSync, constants, openSync, writeSync } from 'node:fs';
import { test } from 'node:test';
import { native, SYNC_FILE_RANGE } from '../../../src/native/index.js';
import { residentBytes } from '../../helpers/loop-fs.js';
import { needNative } from '../../helpers/native.js';
import { haveTool } from '../../helpers/oracles.js';
import { makeTmpDir } from '../../helpers/tmp.js';

const BAD_FD = 999_999;

test('dioAlignment answers from statx, or null; a closed descriptor is EBADF', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const fd = openSync(tmp.path('f'), constants.O_CREAT | constants.O_RDWR);
  try {
    const dio = native!.dioAlignment(fd);
    if (dio !== null) {
      const [memory, offset] = dio;
      // Both zero (no direct I/O) or both powers of two.
      assert.ok((memory === 0 && offset === 0) || (memory > 0 && (memory & (memory - 1)) === 0 && offset > 0 && (offset & (offset - 1)) === 0), String(dio));
    }
  } finally {
    closeSync(fd);
  }
  assert.throws(() => native!.dioAlignment(BAD_FD), (e: NodeJS.ErrnoException) => e.code === 'EBADF' && e.syscall === 'statx');
});

test('isAlignedBuffer tells where a view starts, and refuses bad arguments', (t) => {
  if (!needNative(t)) return;
  const buf = native!.alignedBuffer(8192, 4096);
  assert.equal(native!.isAlignedBuffer(buf, 4096), true);
  assert.equal(native!.isAlignedBuffer(buf.subarray(512), 512), true);
  assert.equal(native!.isAlignedBuffer(buf.subarray(512), 4096), false);
  assert.equal(native!.isAlignedBuffer(buf.subarray(1), 2), false);
  assert.equal(native!.isAlignedBuffer(buf.subarray(1), 1), true);
  assert.throws(() => native!.isAlignedBuffer(buf, 3), (e: NodeJS.ErrnoException) => e.code === 'ERR_INVALID_ARG_VALUE');
  assert.throws(() => native!.isAlignedBuffer({} as Uint8Array, 8), (e: NodeJS.ErrnoException) => e.code === 'ERR_INVALID_ARG_TYPE');
});

test('syncFileRange writes a range back so that it can be dropped; bad descriptors reject', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const file = tmp.path('f');
  const fd = openSync(file, constants.O_CREAT | constants.O_RDWR);
  try {
    writeSync(fd, new Uint8Array(1024 * 1024).fill(1));
    const all = SYNC_FILE_RANGE.WAIT_BEFORE | SYNC_FILE_RANGE.WRITE | SYNC_FILE_RANGE.WAIT_AFTER;
    await native!.syncFileRange(fd, 0, 0, all);
    // Written back, the pages are clean and DONTNEED drops them (dirty ones it would keep).
    native!.fadvise(fd, 0, 0, 4 /* FADV.DONTNEED */);
    if (haveTool('fincore')) assert.equal(await residentBytes(file), 0);
  } finally {
    closeSync(fd);
  }
  await assert.rejects(native!.syncFileRange(BAD_FD, 0, 0, SYNC_FILE_RANGE.WRITE), (e: NodeJS.ErrnoException) => e.code === 'EBADF');
  assert.throws(() => native!.syncFileRange(-1, 0, 0, SYNC_FILE_RANGE.WRITE), RangeError);
});
