/** The addon's copy_file_range (native/fileops.cc) on files in os.tmpdir(). */
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { native } from '../../../src/native/index.js';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { needNative } from '../../helpers/native.js';
import { makeTmpDir } from '../../helpers/tmp.js';

const KiB = 1024;

test('copyFileRange copies a range between files, at other offsets, all of it', async (t) => {
  if (!needNative(t) || !native!.copyFileRange) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const src = pattern(3 * 1024 * KiB + 5, 1);
  writeFileSync(tmp.path('src'), src);
  writeFileSync(tmp.path('dst'), new Uint8Array(4 * 1024 * KiB));
  const [s, d] = [openSync(tmp.path('src'), 'r'), openSync(tmp.path('dst'), 'r+')];
  try {
    await native!.copyFileRange(s, 5, d, 4096 + 7, src.byteLength - 5);
    await native!.copyFileRange(s, 0, d, 0, 0);
  } finally {
    closeSync(s);
    closeSync(d);
  }
  const out = readFileSync(tmp.path('dst'));
  assertBytesEqual(out.subarray(4096 + 7, 4096 + 7 + src.byteLength - 5), src.subarray(5), 'copied range');
  assert.ok(out.subarray(0, 4096 + 7).every((b) => b === 0), 'nothing before it');
});

test('copyFileRange rejects with ENODATA when the source ends first, EBADF on a bad descriptor', async (t) => {
  if (!needNative(t) || !native!.copyFileRange) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  writeFileSync(tmp.path('src'), pattern(8 * KiB, 2));
  writeFileSync(tmp.path('dst'), '');
  const [s, d] = [openSync(tmp.path('src'), 'r'), openSync(tmp.path('dst'), 'r+')];
  t.after(() => {
    closeSync(s);
    closeSync(d);
  });
  await assert.rejects(native!.copyFileRange(s, 4 * KiB, d, 0, 8 * KiB), { code: 'ENODATA', syscall: 'copy_file_range' });
  await assert.rejects(native!.copyFileRange(999_999, 0, d, 0, KiB), { code: 'EBADF' });
  assert.throws(() => native!.copyFileRange!(s, -1, d, 0, KiB), { code: 'ERR_OUT_OF_RANGE' });
});
