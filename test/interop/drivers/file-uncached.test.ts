import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { FileNode } from '../../../src/drivers/protocol/file/file-node.js';
import { native } from '../../../src/native/index.js';
import { residentBytes } from '../../helpers/loop-fs.js';
import { needNative } from '../../helpers/native.js';
import { needTools, run } from '../../helpers/oracles.js';
import { makeTmpDir } from '../../helpers/tmp.js';

const MiB = 1024 * 1024;

function random(n: number): Uint8Array {
  const b = new Uint8Array(n);
  randomFillSync(b);
  return b;
}

test('cache=none opens O_DIRECT with the alignment the file system asks, and caches nothing', async (t) => {
  if (!needNative(t) || !needTools(t, 'fincore')) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const file = tmp.path('img');
  await writeFile(file, '');
  await truncate(file, 8 * MiB);
  const node = await FileNode.open({ filename: file, cache: 'none' });
  t.after(() => node.close());
  assert.equal(node.uncachedBy, 'o-direct');
  const dio = native!.dioAlignment(node.fd);
  const expected = dio ? dio[1] : 4096;
  assert.equal(node.limits.requestAlignment, expected);
  // A buffer that starts off any alignment goes through a bounce buffer; unaligned offsets and
  // lengths through the generic layer's read-modify-write.
  const data = random(3 * MiB + 1);
  await node.write(1000, data.subarray(1));
  await node.write(5 * MiB, data.subarray(0, MiB));
  const back = new Uint8Array(3 * MiB + 1);
  await node.read(999, back.subarray(1));
  assert.deepEqual(back.subarray(2), data.subarray(1, 3 * MiB));
  // Direct I/O bypassed the page cache: nothing of the file is resident (only the partial
  // blocks that the read-modify-write read and wrote could be, and those went O_DIRECT too).
  assert.equal(await residentBytes(file), 0);
  await node.flush();
  const host = new Uint8Array(await readFile(file));
  assert.deepEqual(host.subarray(1000, 1000 + 3 * MiB), data.subarray(1));
  assert.deepEqual(host.subarray(5 * MiB, 6 * MiB), data.subarray(0, MiB));
});

test('where the file system refuses O_DIRECT (ramfs), cache=none drops pages behind buffered I/O', async (t) => {
  if (!needNative(t)) return;
  const tmp = await makeTmpDir();
  const dir = tmp.path('ramfs');
  await mkdir(dir);
  const m = await run('mount', ['-t', 'ramfs', 'ramfs', dir]);
  t.after(async () => {
    if (m.code === 0) await run('umount', [dir]);
    await tmp.cleanup();
  });
  if (m.code !== 0) return void t.skip(`cannot mount ramfs here: ${m.stderr.trim()}`);
  const file = `${dir}/img`;
  const data = random(4 * MiB);
  await writeFile(file, data);
  const node = await FileNode.open({ filename: file, cache: 'none' });
  try {
    assert.equal(node.uncachedBy, 'evict-behind');
    // No O_DIRECT, so no alignment to keep.
    assert.equal(node.limits.requestAlignment, 1);
    const more = random(MiB);
    await node.write(123, more);
    await node.flush();
    const back = new Uint8Array(4 * MiB);
    await node.read(0, back);
    data.set(more, 123);
    assert.deepEqual(back, data);
  } finally {
    await node.close();
  }
  assert.deepEqual(new Uint8Array(await readFile(file)), data);
});
