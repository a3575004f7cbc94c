/**
 * The addon's zero-run scans (native/zero.cc): over a buffer, and over a file through a mapping,
 * which must find what the buffer scan finds in the same bytes.
 */
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, openSync, truncateSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { native } from '../../../src/native/index.js';
import { pattern } from '../../helpers/bytes.js';
import { needNative } from '../../helpers/native.js';
import { makeTmpDir } from '../../helpers/tmp.js';

const KiB = 1024;

test('zeroRuns lists the sparse zero runs as [start, end) pairs, blocks counted from `first`', (t) => {
  if (!needNative(t) || !native!.zeroRuns) return;
  const buf = pattern(64 * KiB, 1);
  buf.fill(0, 4 * KiB, 8 * KiB);
  buf.fill(0, 20 * KiB, 44 * KiB);
  buf.fill(0, 60 * KiB);
  assert.deepEqual([...native!.zeroRuns(buf, 4 * KiB, 4 * KiB, 8 * KiB)], [20 * KiB, 44 * KiB, 60 * KiB, 64 * KiB]);
  assert.deepEqual([...native!.zeroRuns(buf, 4 * KiB, 4 * KiB, 4 * KiB)], [4 * KiB, 8 * KiB, 20 * KiB, 44 * KiB, 60 * KiB, 64 * KiB]);
  // Blocks shifted by 1 KiB: [4k, 8k) of zeros is no whole block now.
  assert.deepEqual([...native!.zeroRuns(buf, 4 * KiB, 3 * KiB, 4 * KiB)], [23 * KiB, 43 * KiB, 63 * KiB, 64 * KiB]);
  assert.deepEqual([...native!.zeroRuns(new Uint8Array(100), 4 * KiB, 4 * KiB, 4 * KiB)], [0, 100]);
  assert.deepEqual([...native!.zeroRuns(new Uint8Array(0), 4 * KiB, 4 * KiB, 4 * KiB)], []);
});

test('zeroRuns refuses a first block longer than the granule, a zero granule and non-Uint8Arrays', (t) => {
  if (!needNative(t) || !native!.zeroRuns) return;
  assert.throws(() => native!.zeroRuns!(new Uint8Array(8), 4096, 4097, 0), { code: 'ERR_OUT_OF_RANGE' });
  assert.throws(() => native!.zeroRuns!(new Uint8Array(8), 0, 1, 0), { code: 'ERR_OUT_OF_RANGE' });
  assert.throws(() => native!.zeroRuns!(new Uint16Array(8) as unknown as Uint8Array, 4096, 4096, 0), { code: 'ERR_INVALID_ARG_TYPE' });
});

test('fileZeroRuns finds in a file what zeroRuns finds in its bytes, at any offset', async (t) => {
  if (!needNative(t) || !native!.fileZeroRuns) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const bytes = pattern(256 * KiB, 2);
  for (const [start, end] of [[0, 8 * KiB], [10 * KiB, 30 * KiB], [100 * KiB, 101 * KiB], [200 * KiB, 256 * KiB]]) bytes.fill(0, start, end);
  const file = tmp.path('f');
  writeFileSync(file, bytes);
  const fd = openSync(file, 'r');
  t.after(() => closeSync(fd));
  // Offsets off the page size exercise the mapping's rounding.
  for (const [offset, length] of [[0, 256 * KiB], [1000, 100 * KiB], [5 * KiB, 251 * KiB], [255 * KiB, KiB], [7, 0]]) {
    const first = Math.min(length, 4 * KiB - (offset % (4 * KiB))) || 4 * KiB;
    const expected = native!.zeroRuns!(bytes.subarray(offset, offset + length), 4 * KiB, first, 8 * KiB);
    assert.deepEqual(await native!.fileZeroRuns(fd, offset, length, 4 * KiB, first, 8 * KiB), expected, `${length} bytes at ${offset}`);
  }
});

test('fileZeroRuns rejects a range past the end of the file with ENODATA', async (t) => {
  if (!needNative(t) || !native!.fileZeroRuns) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const file = tmp.path('f');
  writeFileSync(file, pattern(8 * KiB, 3));
  truncateSync(file, 6 * KiB);
  const fd = openSync(file, 'r');
  t.after(() => closeSync(fd));
  await assert.rejects(native!.fileZeroRuns(fd, 4 * KiB, 4 * KiB, 4 * KiB, 4 * KiB, 4 * KiB), { code: 'ENODATA' });
  await assert.rejects(native!.fileZeroRuns(999_999, 0, 4 * KiB, 4 * KiB, 4 * KiB, 4 * KiB), { code: 'EBADF' });
});

test('fileZeroRuns on a file cut short during the scan fails with EIO (the SIGBUS is caught), and the process goes on', async (t) => {
  if (!needNative(t) || !native!.fileZeroRuns) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const results = new Set<string>();
  for (let i = 0; i < 10; i++) {
    const fd = openSync(tmp.path(`f${i}`), 'w+');
    try {
      // A sparse file: the scan maps and reads 64 MiB of zero pages while it is cut to 4 KiB.
      ftruncateSync(fd, 64 * 1024 * KiB);
      const scan = native!.fileZeroRuns(fd, 0, 64 * 1024 * KiB, 4 * KiB, 4 * KiB, 4 * KiB).then(() => 'ok', (err: NodeJS.ErrnoException) => err.code!);
      await new Promise((resolve) => setTimeout(resolve, 1 + (i % 4)));
      ftruncateSync(fd, 4 * KiB);
      results.add(await scan);
    } finally {
      closeSync(fd);
    }
  }
  // Which it is depends on timing: finished first, saw the new size, or was cut off midway.
  for (const r of results) assert.ok(['ok', 'ENODATA', 'EIO'].includes(r), r);
});
