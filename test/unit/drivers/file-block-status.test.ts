import assert from 'node:assert/strict';
import { truncate, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { FileNode } from '../../../src/drivers/protocol/file/index.js';
import { needNative } from '../../helpers/native.js';
import { makeTmpDir } from '../../helpers/tmp.js';

async function sparseFile(size: number) {
  const tmp = await makeTmpDir();
  const path = tmp.path('sparse.img');
  await writeFile(path, new Uint8Array(0));
  await truncate(path, size);
  return { tmp, path };
}

test('block status reports holes as zero and written blocks as data', async (t) => {
  if (!needNative(t)) return;
  const { tmp, path } = await sparseFile(1024 * 1024);
  try {
    await using node = await FileNode.open({ filename: path });
    await node.write(256 * 1024, new Uint8Array(4096).fill(1));
    const exts = [];
    for await (const e of node.extents(0, node.size)) exts.push([e.offset, e.length, e.data, e.zero]);
    assert.deepEqual(exts, [
      [0, 256 * 1024, false, true],
      [256 * 1024, 4096, true, false],
      [260 * 1024, 1024 * 1024 - 260 * 1024, false, true],
    ]);
  } finally {
    await tmp.cleanup();
  }
});

// Block status may cache a walk of the file's holes. A walk that ran while a write into a hole
// was in flight saw the hole; once the write completes, that answer must not be served.
test('block status never reports a hole for data written by a write that was in flight', async (t) => {
  if (!needNative(t)) return;
  const { tmp, path } = await sparseFile(64 * 1024);
  try {
    await using node = await FileNode.open({ filename: path });
    const stale: number[] = [];
    // The walk starts a varying number of microtask turns after the write: some start after
    // the write has begun and before its data reached the file.
    for (let ticks = 0; ticks < 40; ticks++) {
      await node.discard(0, node.size);
      const write = node.write(32768, new Uint8Array(4096).fill(7));
      for (let i = 0; i < ticks; i++) await Promise.resolve();
      const walk = node.blockStatus(4096, 60_000);
      await Promise.all([write, walk]);
      const e = await node.blockStatus(32768, 4096);
      if (e.zero || !e.data) stale.push(ticks);
    }
    assert.deepEqual(stale, [], 'block status answered "zero" for written data after these delays');
  } finally {
    await tmp.cleanup();
  }
});
