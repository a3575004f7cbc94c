import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { open as openFile, readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { FileNode } from '../../../../../src/drivers/protocol/file/file-node.js';
import { EVICT_WINDOW } from '../../../../../src/drivers/protocol/file/evict-behind.js';
import { FADV, native } from '../../../../../src/native/index.js';
import { residentBytes } from '../../../../helpers/loop-fs.js';
import { needNative } from '../../../../helpers/native.js';
import { needTools } from '../../../../helpers/oracles.js';
import { makeTmpDir } from '../../../../helpers/tmp.js';

const MiB = 1024 * 1024;

/** The readahead window of the block device under `path` (its bdi's read_ahead_kb), 0 if unknown. */
function readaheadBytes(path: string): number {
  const dev = statSync(path).dev;
  try {
    return Number(readFileSync(`/sys/class/bdi/${Math.floor(dev / 256) % 4096}:${dev % 256}/read_ahead_kb`, 'utf8')) * 1024 || 0;
  } catch {
    return 0;
  }
}
const SIZE = 96 * MiB;
const CHUNK = MiB;

/*
 * cache=none without O_DIRECT (direct: false, what a file system that refuses O_DIRECT gets):
 * buffered I/O whose pages are dropped behind it. Run on the temporary directory's file system,
 * whose page cache keeps pages unless told otherwise.
 */

test('writes keep at most the window resident, and none once flushed', async (t) => {
  if (!needNative(t) || !needTools(t, 'fincore')) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const file = tmp.path('img');
  const created = await openFile(file, 'w');
  await created.truncate(SIZE);
  await created.close();
  const node = await FileNode.open({ filename: file, cache: 'none', direct: false });
  t.after(() => node.close());
  assert.equal(node.uncachedBy, 'evict-behind');
  const expected = new Uint8Array(SIZE);
  randomFillSync(expected);
  let peak = 0;
  for (let off = 0; off < SIZE; off += CHUNK) {
    await node.write(off, expected.subarray(off, off + CHUNK));
    if (off % (8 * CHUNK) === 0) peak = Math.max(peak, await residentBytes(file));
  }
  // The window plus the writes that started writeback meanwhile; far less than the file.
  assert.ok(peak <= EVICT_WINDOW + 8 * CHUNK, `peak resident ${peak} bytes`);
  await node.flush();
  assert.equal(await residentBytes(file), 0);
  assert.deepEqual(new Uint8Array(await readFile(file)), expected);
});

test('reads leave at most readahead resident, and nothing once closed', async (t) => {
  if (!needNative(t) || !needTools(t, 'fincore')) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const file = tmp.path('img');
  const expected = new Uint8Array(32 * MiB);
  randomFillSync(expected);
  const fh = await openFile(file, 'w');
  await fh.write(expected);
  await fh.datasync();
  native!.fadvise(fh.fd, 0, 0, FADV.DONTNEED);
  await fh.close();
  assert.equal(await residentBytes(file), 0, 'the test starts with nothing cached');
  const node = await FileNode.open({ filename: file, cache: 'none', direct: false, readOnly: true });
  const got = new Uint8Array(expected.byteLength);
  try {
    // Several reads in flight, as a copy has them.
    await Promise.all(Array.from({ length: 32 }, (_, i) => node.read(i * MiB, got.subarray(i * MiB, (i + 1) * MiB))));
    // Pages read ahead for a read that had already dropped its range may linger until close:
    // reads in flight together (and the I/O queue's pieces of each) let one read's readahead
    // refill a range another has dropped, up to the device's readahead window.
    const lingering = await residentBytes(file);
    const readahead = Math.max(4 * MiB, readaheadBytes(tmp.path('.')));
    assert.ok(lingering <= readahead, `${lingering} bytes resident (readahead ${readahead})`);
  } finally {
    await node.close();
  }
  assert.deepEqual(got, expected);
  assert.equal(await residentBytes(file), 0);
});

test('adviseDontNeed drops clean pages of a cached node', async (t) => {
  if (!needNative(t) || !needTools(t, 'fincore')) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const file = tmp.path('img');
  const node = await FileNode.open({ filename: file, create: true });
  t.after(() => node.close());
  await node.resize(8 * MiB);
  await node.write(0, new Uint8Array(8 * MiB).fill(7));
  await node.flush();
  assert.equal(node.uncachedBy, undefined);
  assert.equal(await residentBytes(file), 8 * MiB);
  node.adviseDontNeed(0, 4 * MiB);
  assert.equal(await residentBytes(file), 4 * MiB);
});
