/**
 * Zero writes of the file protocol on the file systems that answer fallocate differently:
 * ext4 (ZERO_RANGE), tmpfs (no ZERO_RANGE: punch and allocate again), ext2 (no fallocate at all)
 * and a block device (a loop device, where only punching is promised never to write zeros).
 * For each: what mayUnmap, noFallback and allocate leave behind, in bytes and in allocation.
 */
import assert from 'node:assert/strict';
import { stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { FileNode } from '../../../../../src/drivers/protocol/file/index.js';
import { pattern } from '../../../../helpers/bytes.js';
import { mountLoopFs } from '../../../../helpers/loop-fs.js';
import { needNative } from '../../../../helpers/native.js';
import { run } from '../../../../helpers/oracles.js';
import { makeTmpDir } from '../../../../helpers/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 4 * MiB;

/** Bytes the file has allocated (st_blocks). */
async function allocated(file: string): Promise<number> {
  return (await stat(file)).blocks * 512;
}

async function readBack(node: FileNode, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await node.read(offset, buf);
  return buf;
}

const zeros = (n: number) => new Uint8Array(n);

/** A file of SIZE patterned bytes, with a 1 MiB hole at 2 MiB, opened as a growable file node. */
async function patterned(t: TestContext, dir: string): Promise<{ node: FileNode; file: string }> {
  const file = path.join(dir, `z-${Math.random().toString(36).slice(2)}.img`);
  await writeFile(file, pattern(SIZE, 7));
  const node = await FileNode.open({ filename: file, growable: true });
  await node.writeZeroes(2 * MiB, MiB, { mayUnmap: true });
  t.after(() => node.close());
  return { node, file };
}

/** The behaviour every file system with fallocate shares (ext4 and tmpfs take different calls to get there). */
async function fallocatingFileSystem(t: TestContext, dir: string): Promise<void> {
  const { node, file } = await patterned(t, dir);
  assert.ok((await allocated(file)) <= SIZE - MiB, 'the hole was punched');

  // allocate over data: zeros, and the blocks stay allocated.
  let before = await allocated(file);
  await node.writeZeroes(0, 256 * KiB, { allocate: true });
  assert.deepEqual(await readBack(node, 0, 256 * KiB), zeros(256 * KiB));
  assert.ok((await allocated(file)) >= before, `allocate over data freed blocks: ${before} -> ${await allocated(file)}`);

  // allocate over a hole: zeros, now allocated.
  before = await allocated(file);
  await node.writeZeroes(2 * MiB, 512 * KiB, { allocate: true });
  assert.deepEqual(await readBack(node, 2 * MiB, 512 * KiB), zeros(512 * KiB));
  assert.ok((await allocated(file)) >= before + 512 * KiB, `allocate over a hole: ${before} -> ${await allocated(file)}`);

  // allocate past the end: the file grows, reserved and reading zeros.
  before = await allocated(file);
  await node.writeZeroes(SIZE + 64 * KiB, MiB, { allocate: true });
  assert.equal(node.size, SIZE + 64 * KiB + MiB);
  assert.equal((await stat(file)).size, SIZE + 64 * KiB + MiB);
  assert.ok((await allocated(file)) >= before + MiB, `allocate past the end: ${before} -> ${await allocated(file)}`);
  assert.deepEqual(await readBack(node, SIZE, 64 * KiB + MiB), zeros(64 * KiB + MiB));

  // noFallback: zeroed without writing buffers (it cannot fall back, so success means fallocate did it).
  await node.writeZeroes(MiB, 128 * KiB, { noFallback: true });
  assert.deepEqual(await readBack(node, MiB, 128 * KiB), zeros(128 * KiB));

  // mayUnmap over data: a hole.
  before = await allocated(file);
  await node.writeZeroes(3 * MiB, 512 * KiB, { mayUnmap: true, noFallback: true });
  assert.deepEqual(await readBack(node, 3 * MiB, 512 * KiB), zeros(512 * KiB));
  assert.ok((await allocated(file)) <= before - 512 * KiB, `unmapping freed nothing: ${before} -> ${await allocated(file)}`);

  // Nothing else changed.
  const want = pattern(SIZE, 7);
  assert.deepEqual(await readBack(node, 256 * KiB, MiB - 256 * KiB), want.subarray(256 * KiB, MiB));
  assert.deepEqual(await readBack(node, MiB + 128 * KiB, MiB - 128 * KiB), want.subarray(MiB + 128 * KiB, 2 * MiB));
  assert.deepEqual(await readBack(node, 3 * MiB + 512 * KiB, 512 * KiB), want.subarray(3 * MiB + 512 * KiB));
}

describe('file zero writes, per file system', () => {
  it('ext4 or whatever the temporary directory is on: ZERO_RANGE', async (t) => {
    if (!needNative(t)) return;
    const tmp = await makeTmpDir();
    t.after(() => tmp.cleanup());
    await fallocatingFileSystem(t, tmp.dir);
  });

  it('tmpfs: no ZERO_RANGE, so a punched hole is allocated again', async (t) => {
    if (!needNative(t)) return;
    const shm = '/dev/shm';
    const fs = await run('stat', ['-f', '-c', '%T', shm]).catch(() => undefined);
    if (fs?.stdout.trim() !== 'tmpfs') return t.skip('no tmpfs at /dev/shm');
    const tmp = { dir: path.join(shm, `vdisk-zero-${process.pid}`) };
    await run('mkdir', ['-p', tmp.dir]);
    t.after(() => run('rm', ['-rf', tmp.dir]));
    await fallocatingFileSystem(t, tmp.dir);
  });

  it('ext2: punching but no allocation; allocate and noFallback refuse with the data intact, plain zeroing writes zeros', async (t) => {
    if (!needNative(t)) return;
    const fs = await mountLoopFs(t, 'mkfs.ext2', ['-q', '-F'], 64 * MiB);
    if (!fs) return;
    const { node, file } = await patterned(t, fs.dir);
    const want = pattern(SIZE, 7).fill(0, 2 * MiB, 3 * MiB);
    for (const opts of [{ allocate: true }, { noFallback: true }, { allocate: true, mayUnmap: true }]) {
      await assert.rejects(node.writeZeroes(0, 256 * KiB, opts), { code: 'ENOTSUP' }, JSON.stringify(opts));
      await assert.rejects(node.writeZeroes(SIZE, 256 * KiB, opts), { code: 'ENOTSUP' }, `${JSON.stringify(opts)} past the end`);
      assert.equal(node.size, SIZE);
    }
    assert.deepEqual(await readBack(node, 0, SIZE), want, 'refused zero writes changed nothing');
    // ext2 punches holes (indirect blocks can be freed): that is a fast zero.
    const before = await allocated(file);
    await node.writeZeroes(MiB, 256 * KiB, { noFallback: true, mayUnmap: true });
    assert.ok((await allocated(file)) <= before - 256 * KiB, 'the zero write punched a hole');
    // Without a fast way, plain zero writes fall back to writing zeros.
    await node.writeZeroes(0, 256 * KiB);
    assert.deepEqual(await readBack(node, 0, SIZE), want.fill(0, 0, 256 * KiB).fill(0, MiB, MiB + 256 * KiB));
  });

  it('a block device: noFallback and allocate refuse unless a punch may do it', async (t) => {
    if (!needNative(t)) return;
    const tmp = await makeTmpDir();
    t.after(() => tmp.cleanup());
    const backing = tmp.path('loop.img');
    await writeFile(backing, pattern(SIZE, 9));
    const losetup = await run('losetup', ['-f', '--show', backing]).catch(() => undefined);
    if (!losetup || losetup.code !== 0) return t.skip(`loop devices are not available here (${losetup?.stderr.trim() ?? 'no losetup'})`);
    const dev = losetup.stdout.trim();
    t.after(() => run('losetup', ['-d', dev]));
    const node = await FileNode.open({ filename: dev });
    t.after(() => node.close());
    const want = pattern(SIZE, 9);
    for (const opts of [{ allocate: true }, { noFallback: true }, { allocate: true, mayUnmap: true }]) {
      await assert.rejects(node.writeZeroes(0, 256 * KiB, opts), { code: 'ENOTSUP' }, JSON.stringify(opts));
    }
    assert.deepEqual(await readBack(node, 0, SIZE), want, 'refused zero writes changed nothing');
    // A loop device over a file punches the file: zeros without writing any.
    await node.writeZeroes(MiB, 256 * KiB, { noFallback: true, mayUnmap: true });
    await node.writeZeroes(2 * MiB, 256 * KiB);
    assert.deepEqual(await readBack(node, 0, SIZE), want.fill(0, MiB, MiB + 256 * KiB).fill(0, 2 * MiB, 2 * MiB + 256 * KiB));
  });
});
