import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { test, type TestContext } from 'node:test';
import { vdisk } from '../../helpers/cli.js';
import { mountLoopFs, type LoopFs } from '../../helpers/loop-fs.js';
import { needNative } from '../../helpers/native.js';
import { needTools, qemuImgMap, runOk } from '../../helpers/oracles.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/**
 * A sparse raw image of `size` bytes: random data in every other `run` bytes, starting at 0,
 * holes between. Returns the bytes of data written.
 */
async function stripedImage(file: string, size: number, run: number): Promise<number> {
  const fh = await open(file, 'w');
  let data = 0;
  try {
    await fh.truncate(size);
    const chunk = new Uint8Array(Math.min(run, 16 * MiB));
    for (let start = 0; start < size; start += 2 * run) {
      for (let off = start; off < Math.min(start + run, size); off += chunk.byteLength) {
        randomFillSync(chunk);
        const n = Math.min(chunk.byteLength, size - off);
        await fh.write(chunk, 0, n, off);
        data += n;
      }
    }
    await fh.datasync();
  } finally {
    await fh.close();
  }
  return data;
}

/** Bytes of `file` in extents it shares with another file (filefrag's "shared" flag). */
async function sharedBytes(file: string): Promise<number> {
  const out = await runOk('filefrag', ['-v', '-b4096', file]);
  let blocks = 0;
  for (const line of out.split('\n')) {
    const m = /^\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+):.*\bshared\b/.exec(line);
    if (m) blocks += Number(m[1]);
  }
  return blocks * 4096;
}

async function convert(args: string[]): Promise<void> {
  const r = await vdisk(['convert', ...args]);
  assert.equal(r.code, 0, r.stderr);
}

async function xfs(t: TestContext, size: number): Promise<LoopFs | undefined> {
  if (!needNative(t) || !needTools(t, 'qemu-img')) return undefined;
  return mountLoopFs(t, 'mkfs.xfs', ['-q', '-m', 'reflink=1'], size);
}

test('XFS with reflink: raw to raw of 1 GiB clones, byte-identical, holes kept, almost no space used', async (t) => {
  const fs = await xfs(t, 3 * GiB);
  if (!fs || !needTools(t, 'filefrag')) return;
  const src = `${fs.dir}/src.raw`;
  const data = await stripedImage(src, GiB, 64 * MiB);
  const free = await fs.free();
  await convert(['-f', 'raw', '-O', 'raw', src, `${fs.dir}/dst.raw`]);
  const used = free - (await fs.free());
  assert.ok(used < 4 * MiB, `the clone used ${used} bytes of free space (the data is ${data} bytes)`);
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, `${fs.dir}/dst.raw`]);
  assert.deepEqual(await qemuImgMap(`${fs.dir}/dst.raw`), await qemuImgMap(src), 'the same data runs and holes');
  assert.equal(await sharedBytes(`${fs.dir}/dst.raw`), data, 'every data extent is shared with the source');
  // What makes the difference: copying the same image takes the space of its data.
  const before = await fs.free();
  await convert(['--reflink=never', '-f', 'raw', '-O', 'raw', src, `${fs.dir}/copy.raw`]);
  assert.ok(before - (await fs.free()) >= data, 'a copy allocates its data');
});

test('XFS: sources laid end to end off the block boundary clone where they can and copy the seam', async (t) => {
  const fs = await xfs(t, 512 * MiB);
  if (!fs || !needTools(t, 'cmp', 'filefrag')) return;
  const a = `${fs.dir}/a.raw`;
  const b = `${fs.dir}/b.raw`;
  const dst = `${fs.dir}/dst.raw`;
  await stripedImage(a, MiB + 512, MiB);
  // 152 MiB of data in 300 MiB: more than one clone window.
  const data = await stripedImage(b, 300 * MiB, 8 * MiB);
  const free = await fs.free();
  await convert(['--reflink=auto', '-f', 'raw', '-O', 'raw', a, b, dst]);
  assert.equal((await stat(dst)).size, MiB + 512 + 300 * MiB);
  await runOk('cmp', ['-n', String(MiB + 512), a, dst]);
  await runOk('cmp', ['-i', `0:${MiB + 512}`, b, dst]);
  // a was cloned; b, 512 bytes off the 4 KiB blocks, was copied: its data takes space, no more.
  assert.equal(await sharedBytes(dst), MiB, 'a was cloned');
  assert.ok(free - (await fs.free()) >= data, 'b was copied');
  assert.ok((await stat(dst)).blocks * 512 <= data + 2 * MiB, 'holes stayed holes');
});

test('ext4: the same command copies; --reflink=always fails and says why', async (t) => {
  if (!needNative(t) || !needTools(t, 'qemu-img')) return;
  const fs = await mountLoopFs(t, 'mkfs.ext4', ['-q', '-F'], 512 * MiB);
  if (!fs) return;
  const src = `${fs.dir}/src.raw`;
  const data = await stripedImage(src, 128 * MiB, 16 * MiB);
  const free = await fs.free();
  await convert(['-f', 'raw', '-O', 'raw', src, `${fs.dir}/dst.raw`]);
  assert.ok(free - (await fs.free()) >= data, 'copied: the data takes space');
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, `${fs.dir}/dst.raw`]);
  assert.deepEqual(await qemuImgMap(`${fs.dir}/dst.raw`), await qemuImgMap(src));
  const r = await vdisk(['convert', '--reflink=always', '-f', 'raw', '-O', 'raw', src, `${fs.dir}/always.raw`]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^vdisk convert: Could not clone '.*src\.raw' into '.*always\.raw': Operation not supported\n$/);
});

test('--reflink=always refuses what cannot be a clone; an unknown mode is a usage error', async (t) => {
  const fs = await xfs(t, 512 * MiB);
  if (!fs) return;
  const src = `${fs.dir}/src.raw`;
  await stripedImage(src, 8 * MiB, MiB);
  const fails = async (args: string[], message: RegExp) => {
    const r = await vdisk(['convert', ...args]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, message);
  };
  await fails(['--reflink=always', '-f', 'raw', '-O', 'qcow2', src, `${fs.dir}/x.qcow2`], /--reflink=always: the target '.*x\.qcow2' is not a raw image on a file\n$/);
  await fails(['--reflink=always', '-S', '0', '-f', 'raw', '-O', 'raw', src, `${fs.dir}/x.raw`], /--reflink=always: -S 0 asks for a fully allocated target/);
  await fails(['--reflink=sometimes', '-f', 'raw', '-O', 'raw', src, `${fs.dir}/y.raw`], /Invalid --reflink value 'sometimes': expected auto, always or never/);
  // Under auto, -S 0 copies and allocates everything, as it asks.
  await convert(['-S', '0', '-f', 'raw', '-O', 'raw', src, `${fs.dir}/full.raw`]);
  assert.equal((await stat(`${fs.dir}/full.raw`)).blocks * 512, 8 * MiB);
});
