import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { test, type TestContext } from 'node:test';
import { BlockError, NotSupportedError } from '../../../src/core/errors.js';
import { FileNode } from '../../../src/drivers/protocol/file/file-node.js';
import { mountLoopFs } from '../../helpers/loop-fs.js';
import { needNative } from '../../helpers/native.js';
import { needTools, qemuImgMap } from '../../helpers/oracles.js';
import { makeSparseFile } from '../../helpers/tmp.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

function random(n: number): Uint8Array {
  const b = new Uint8Array(n);
  randomFillSync(b);
  return b;
}

/** A sparse source: two data runs and a partial block at the end. */
async function sparseSource(file: string): Promise<Uint8Array> {
  const runs = [{ offset: 4 * MiB, data: random(4 * MiB) }, { offset: 20 * MiB, data: random(MiB) }, { offset: SIZE - 1000, data: random(1000) }];
  await makeSparseFile(file, SIZE, runs);
  const image = new Uint8Array(SIZE);
  for (const r of runs) image.set(r.data, r.offset);
  return image;
}

async function xfs(t: TestContext) {
  if (!needNative(t) || !needTools(t, 'qemu-img')) return undefined;
  return mountLoopFs(t, 'mkfs.xfs', ['-q', '-m', 'reflink=1'], 512 * MiB);
}

async function opened(t: TestContext, filename: string, readOnly = false): Promise<FileNode> {
  const node = await FileNode.open({ filename, readOnly });
  t.after(() => node.close());
  return node;
}

test('XFS: data runs are shared, holes stay holes, and no space is used', async (t) => {
  const fs = await xfs(t);
  if (!fs) return;
  const image = await sparseSource(`${fs.dir}/src`);
  await makeSparseFile(`${fs.dir}/dst`, SIZE, []);
  const src = await opened(t, `${fs.dir}/src`, true);
  const dst = await opened(t, `${fs.dir}/dst`);
  const free = await fs.free();
  const cloned = await dst.cloneRange(src, 0, 0, SIZE, { targetIsZero: true });
  assert.equal(cloned, 5 * MiB + 4096, 'the data runs, the last one to its file system block');
  assert.ok(free - (await fs.free()) < MiB, `used ${free - (await fs.free())} bytes`);
  assert.deepEqual(new Uint8Array(await readFile(`${fs.dir}/dst`)), image);
  assert.deepEqual(await qemuImgMap(`${fs.dir}/dst`), await qemuImgMap(`${fs.dir}/src`));
});

test('XFS: over an allocated target, the source holes are punched', async (t) => {
  const fs = await xfs(t);
  if (!fs) return;
  const image = await sparseSource(`${fs.dir}/src`);
  await writeFile(`${fs.dir}/dst`, random(SIZE));
  const src = await opened(t, `${fs.dir}/src`, true);
  const dst = await opened(t, `${fs.dir}/dst`);
  await dst.cloneRange(src, 0, 0, SIZE);
  assert.deepEqual(new Uint8Array(await readFile(`${fs.dir}/dst`)), image);
  assert.deepEqual(await qemuImgMap(`${fs.dir}/dst`), await qemuImgMap(`${fs.dir}/src`));
});

test('XFS: a range off the file system blocks is not supported, for the caller to copy', async (t) => {
  const fs = await xfs(t);
  if (!fs) return;
  await sparseSource(`${fs.dir}/src`);
  await makeSparseFile(`${fs.dir}/dst`, SIZE, []);
  const src = await opened(t, `${fs.dir}/src`, true);
  const dst = await opened(t, `${fs.dir}/dst`);
  await assert.rejects(dst.cloneRange(src, 4 * MiB, 512, MiB), (err: unknown) => {
    assert.ok(err instanceof NotSupportedError, String(err));
    assert.match(err.message, /^Could not clone '.*src' into '.*dst': the ranges are not aligned to the file system's blocks$/);
    return true;
  });
  await assert.rejects(dst.cloneRange(src, 0, SIZE - 4096, 8192), (err: unknown) => err instanceof BlockError && err.code === 'ERANGE');
  const readOnly = await opened(t, `${fs.dir}/dst`, true);
  await assert.rejects(readOnly.cloneRange(src, 0, 0, MiB), (err: unknown) => err instanceof BlockError && err.code === 'EROFS');
});

test('ext4, and two file systems: not supported, with the system\'s reason', async (t) => {
  if (!needNative(t)) return;
  const ext4 = await mountLoopFs(t, 'mkfs.ext4', ['-q', '-F'], 128 * MiB);
  if (!ext4) return;
  await sparseSource(`${ext4.dir}/src`);
  await makeSparseFile(`${ext4.dir}/dst`, SIZE, []);
  const src = await opened(t, `${ext4.dir}/src`, true);
  const dst = await opened(t, `${ext4.dir}/dst`);
  const notSupported = (why: RegExp) => (err: unknown) => {
    assert.ok(err instanceof NotSupportedError, String(err));
    assert.match(err.message, why);
    return true;
  };
  await assert.rejects(dst.cloneRange(src, 0, 0, SIZE), notSupported(/^Could not clone '.*src' into '.*dst': Operation not supported$/));
  const fs = await xfs(t);
  if (!fs) return;
  await sparseSource(`${fs.dir}/src`);
  const other = await opened(t, `${fs.dir}/src`, true);
  await assert.rejects(dst.cloneRange(other, 0, 0, SIZE), notSupported(/: Invalid cross-device link$/));
});
