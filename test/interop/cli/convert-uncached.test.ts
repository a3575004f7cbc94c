import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { open, writeFile } from 'node:fs/promises';
import { test, type TestContext } from 'node:test';
import { FADV, native } from '../../../src/native/index.js';
import { vdisk } from '../../helpers/cli.js';
import { residentBytes } from '../../helpers/loop-fs.js';
import { needNative } from '../../helpers/native.js';
import { needTools, run, runOk } from '../../helpers/oracles.js';
import { makeTmpDir } from '../../helpers/tmp.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** Random bytes into a new file, 16 MiB at a time, on disk when this returns. */
async function randomFile(file: string, size: number): Promise<void> {
  const fh = await open(file, 'w');
  try {
    const chunk = new Uint8Array(16 * MiB);
    for (let off = 0; off < size; off += chunk.byteLength) {
      randomFillSync(chunk);
      await fh.write(chunk, 0, Math.min(chunk.byteLength, size - off), off);
    }
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/**
 * Empties the page cache as the check does (root: drop_caches). Where that is not
 * allowed, the file's own pages are dropped, which is all the measurement needs.
 */
async function dropCaches(file: string): Promise<void> {
  await run('sync', []);
  await writeFile('/proc/sys/vm/drop_caches', '3').catch(async () => {
    const fh = await open(file, 'r');
    native!.fadvise(fh.fd, 0, 0, FADV.DONTNEED);
    await fh.close();
  });
}

/**
 * Converts a random raw image of `size` bytes, its pages dropped first, with `args`; returns
 * the source, the target and how many bytes of both the page cache holds afterwards.
 */
async function convertUncached(t: TestContext, size: number, args: string[], format: string) {
  const tmp = await makeTmpDir('vdisk-uncached-');
  t.after(() => tmp.cleanup());
  const src = tmp.path('src.raw');
  const dst = tmp.path(`dst.${format}`);
  await randomFile(src, size);
  await dropCaches(src);
  assert.equal(await residentBytes(src), 0, 'the source starts uncached');
  const r = await vdisk(['convert', ...args, '-f', 'raw', '-O', format, src, dst]);
  assert.equal(r.code, 0, r.stderr);
  return { src, dst, resident: (await residentBytes(src)) + (await residentBytes(dst)) };
}

test('convert --cache=none of a 1 GiB random raw image leaves under 5% of source and target in the page cache', async (t) => {
  if (!needNative(t) || !needTools(t, 'fincore', 'qemu-img')) return;
  const { src, dst, resident } = await convertUncached(t, GiB, ['--cache=none'], 'raw');
  assert.ok(resident < 0.05 * 2 * GiB, `${resident} bytes of source and target resident`);
  // Compared last: qemu-img compare reads both through the page cache.
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, dst]);
});

test('convert -T none -t none into qcow2 keeps both out of the page cache too', async (t) => {
  if (!needNative(t) || !needTools(t, 'fincore', 'qemu-img')) return;
  const { src, dst, resident } = await convertUncached(t, 64 * MiB, ['-T', 'none', '-t', 'none'], 'qcow2');
  assert.ok(resident < 0.05 * 2 * 64 * MiB, `${resident} bytes of source and target resident`);
  await runOk('qemu-img', ['check', '-f', 'qcow2', dst]);
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, dst]);
});

test('convert rejects a cache mode it does not know, as qemu-img does', async () => {
  const r = await vdisk(['convert', '--cache=bogus', '-O', 'raw', 'a', 'b']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /Invalid cache option: bogus/);
});
