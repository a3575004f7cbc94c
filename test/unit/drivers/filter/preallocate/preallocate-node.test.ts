/**
 * The preallocate filter over real files: the file grows in steps ahead of the data and is cut
 * back on close; zero writes where the file already reads zeros cost nothing, and never skip
 * data written there since; where the file system cannot allocate cheaply (ext2) it steps aside.
 */
import assert from 'node:assert/strict';
import { stat, writeFile } from 'node:fs/promises';
import { describe, it, type TestContext } from 'node:test';
import type { BlockNode } from '../../../../../src/core/block-node.js';
import type { ZeroOptions } from '../../../../../src/core/types.js';
import { PreallocateNode } from '../../../../../src/drivers/filter/preallocate/index.js';
import { open } from '../../../../../src/registry/index.js';
import { pattern } from '../../../../helpers/bytes.js';
import { mountLoopFs } from '../../../../helpers/loop-fs.js';
import { needNative } from '../../../../helpers/native.js';
import { makeTmpDir } from '../../../../helpers/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Counts the zero writes that reach the file under the filter. */
function countZeroes(file: BlockNode): ZeroOptions[] {
  const seen: ZeroOptions[] = [];
  const original = file.writeZeroes.bind(file);
  file.writeZeroes = (offset, length, opts = {}) => {
    seen.push({ ...opts });
    return original(offset, length, opts);
  };
  return seen;
}

async function filterOver(t: TestContext, path: string, extra: Record<string, unknown> = {}): Promise<PreallocateNode> {
  const node = await open({ driver: 'preallocate', file: path, ...extra });
  assert.ok(node instanceof PreallocateNode);
  t.after(() => node.close());
  return node;
}

async function readAll(node: BlockNode): Promise<Uint8Array> {
  const buf = new Uint8Array(node.size);
  await node.read(0, buf);
  return buf;
}

describe('preallocate filter', () => {
  it('grows the file in prealloc-size steps rounded to prealloc-align, and cuts it back on close', async (t) => {
    if (!needNative(t)) return;
    const tmp = await makeTmpDir();
    t.after(() => tmp.cleanup());
    const path = tmp.path('a.img');
    await writeFile(path, pattern(100 * KiB, 1));
    const node = await filterOver(t, path, { 'prealloc-size': '1M', 'prealloc-align': '256k' });
    assert.equal(node.size, 100 * KiB);
    await node.write(100 * KiB, pattern(8 * KiB, 2));
    // 108 KiB + 1 MiB, up to a multiple of 256 KiB.
    assert.equal((await stat(path)).size, 1280 * KiB);
    assert.ok((await stat(path)).blocks * 512 >= 1280 * KiB, 'the step is allocated');
    assert.equal(node.size, 108 * KiB, 'the node ends where the data does');
    // Within the step: no growth.
    await node.write(500 * KiB, pattern(4 * KiB, 3));
    assert.equal((await stat(path)).size, 1280 * KiB);
    // Past it: the next step.
    await node.write(1300 * KiB, pattern(4 * KiB, 4));
    assert.equal((await stat(path)).size, 2560 * KiB);
    assert.equal(node.size, 1304 * KiB);
    const want = new Uint8Array(1304 * KiB);
    want.set(pattern(100 * KiB, 1));
    want.set(pattern(8 * KiB, 2), 100 * KiB);
    want.set(pattern(4 * KiB, 3), 500 * KiB);
    want.set(pattern(4 * KiB, 4), 1300 * KiB);
    assert.deepEqual(await readAll(node), want);
    await node.close();
    assert.equal((await stat(path)).size, 1304 * KiB, 'trimmed to the data end on close');
  });

  it('zero writes inside the preallocated zeros reach nothing; once data is written there they do', async (t) => {
    if (!needNative(t)) return;
    const tmp = await makeTmpDir();
    t.after(() => tmp.cleanup());
    const path = tmp.path('b.img');
    await writeFile(path, new Uint8Array(64 * KiB));
    const node = await filterOver(t, path, { 'prealloc-size': '2M' });
    const seen = countZeroes(node.child);
    // A zero write past the end: the preallocation zeroes it, and that is the only call.
    await node.writeZeroes(64 * KiB, 64 * KiB, { allocate: true });
    assert.equal(seen.length, 1, 'one preallocating zero write');
    assert.equal(seen[0]!.allocate, true);
    await node.writeZeroes(128 * KiB, 64 * KiB, { allocate: true });
    await node.writeZeroes(128 * KiB, 64 * KiB, { noFallback: true });
    assert.equal(seen.length, 1, 'zeroes in the preallocated area are free');
    // Data written there: a later zero write over it must zero it (QEMU's filter would skip it).
    await node.write(64 * KiB, pattern(4 * KiB, 5));
    await node.writeZeroes(64 * KiB, 128 * KiB, { allocate: true });
    assert.deepEqual(await readAll(node), new Uint8Array(192 * KiB));
    // With unmap or FUA the file does the work.
    const before = seen.length;
    await node.writeZeroes(256 * KiB, 64 * KiB, { mayUnmap: true });
    await node.writeZeroes(320 * KiB, 64 * KiB, { fua: true });
    assert.equal(seen.length, before + 2);
    assert.equal(node.size, 384 * KiB);
  });

  it('many concurrent writes past the end: contents intact, one file end', async (t) => {
    if (!needNative(t)) return;
    const tmp = await makeTmpDir();
    t.after(() => tmp.cleanup());
    const path = tmp.path('c.img');
    await writeFile(path, '');
    const node = await filterOver(t, path, { 'prealloc-size': '64k', 'prealloc-align': '64k' });
    const want = new Uint8Array(2 * MiB);
    const writes: Promise<void>[] = [];
    // Out of order, so requests past the end overtake each other while steps are being added.
    for (let i = 0; i < 128; i++) {
      const at = ((i * 37) % 128) * 16 * KiB;
      const data = pattern(16 * KiB, i + 1);
      want.set(data, at);
      writes.push(i % 3 === 0 ? node.writeZeroes(at, 16 * KiB).then(() => want.fill(0, at, at + 16 * KiB) && undefined) : node.write(at, data));
    }
    await Promise.all(writes);
    assert.equal(node.size, 2 * MiB);
    assert.deepEqual(await readAll(node), want);
    await node.close();
    assert.equal((await stat(path)).size, 2 * MiB);
  });

  it('resize drops the preallocation first, then resizes', async (t) => {
    if (!needNative(t)) return;
    const tmp = await makeTmpDir();
    t.after(() => tmp.cleanup());
    const path = tmp.path('d.img');
    await writeFile(path, pattern(64 * KiB, 6));
    const node = await filterOver(t, path, { 'prealloc-size': '1M' });
    await node.write(64 * KiB, pattern(64 * KiB, 7));
    assert.ok((await stat(path)).size > 128 * KiB);
    await node.resize(96 * KiB);
    assert.equal((await stat(path)).size, 96 * KiB);
    assert.equal(node.size, 96 * KiB);
    await node.resize(200 * KiB);
    assert.equal((await stat(path)).size, 200 * KiB);
    const want = new Uint8Array(200 * KiB);
    want.set(pattern(64 * KiB, 6));
    want.set(pattern(64 * KiB, 7).subarray(0, 32 * KiB), 64 * KiB);
    assert.deepEqual(await readAll(node), want);
  });

  it('on ext2 (no cheap allocation) it steps aside: writes land, the file grows with them only', async (t) => {
    if (!needNative(t)) return;
    const fs = await mountLoopFs(t, 'mkfs.ext2', ['-q', '-F'], 32 * MiB);
    if (!fs) return;
    const path = `${fs.dir}/e.img`;
    await writeFile(path, '');
    const node = await filterOver(t, path);
    await node.write(0, pattern(100 * KiB, 8));
    await node.write(200 * KiB, pattern(10 * KiB, 9));
    assert.equal((await stat(path)).size, 210 * KiB);
    const want = new Uint8Array(210 * KiB);
    want.set(pattern(100 * KiB, 8));
    want.set(pattern(10 * KiB, 9), 200 * KiB);
    assert.deepEqual(await readAll(node), want);
  });

  it('options and children: QEMU messages for a bad prealloc-align; only over a file', async (t) => {
    const tmp = await makeTmpDir();
    t.after(() => tmp.cleanup());
    const path = tmp.path('f.img');
    await writeFile(path, new Uint8Array(4096));
    await assert.rejects(open({ driver: 'preallocate', file: path, 'prealloc-align': 1000 }),
      { code: 'EINVAL', message: 'prealloc-align parameter of preallocate filter is not aligned to 512' });
    await assert.rejects(open({ driver: 'preallocate', file: { driver: 'file', filename: path, 'request-alignment': 4096 }, 'prealloc-align': '2k' }),
      { code: 'EINVAL', message: 'prealloc-align parameter of preallocate filter is not aligned to underlying node request alignment (4096)' });
    await assert.rejects(open({ driver: 'preallocate', file: path, 'prealloc-size': 'lots' }), { code: 'EINVAL' });
    await assert.rejects(open({ driver: 'preallocate', file: { driver: 'null', size: 4096 } }),
      { code: 'EINVAL', message: "preallocate: the filter works over a file node only, not 'null'" });
    await assert.rejects(open({ driver: 'preallocate' }), { code: 'EINVAL' });
    // The file is left closed and unlocked: it opens again.
    const again = await filterOver(t, path);
    assert.equal(again.size, 4096);
  });
});
