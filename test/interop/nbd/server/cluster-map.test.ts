import assert from 'node:assert/strict';
import { copyFile, readFile } from 'node:fs/promises';
import { after, before, it } from 'node:test';
import { native } from '../../../../src/native/index.js';
import { open } from '../../../../src/registry/index.js';
import { fioVerify } from '../../../helpers/fio.js';
import { startServer, type TestServer } from '../../../helpers/nbd-server.js';
import { needTools, run, runOk } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';

/*
 * qcow2 writes on the native data plane (src/nbd/server/cluster-map.ts): real clients write
 * through `vdisk serve`'s server into allocated clusters, which the plane overwrites in place.
 * The image must end as the same writes leave it when qemu-io makes them on a copy, qemu-img
 * check must find it clean, and clusters shared with a snapshot must never be written in place.
 */

const MiB = 1024 * 1024;

let tmp: TmpDir;
let serial = 0;
before(async () => {
  tmp = await makeTmpDir('vdisk-nbd-cluster-map-');
});
after(() => tmp.cleanup());

const skip = native ? false : 'the native addon is not loaded';
/**
 * qemu-io's default cache mode, writethrough, sends every write with FUA, which the plane
 * forwards (a FUA write must flush the image's metadata too); writeback sends plain writes.
 */
const WRITEBACK = ['-t', 'writeback'];

/** A qcow2 of `size` bytes made by qemu-img, every cluster written by qemu-io (so all are allocated and ours alone). */
async function allocatedImage(size: number, fill: number): Promise<string> {
  const path = tmp.path(`a${++serial}.qcow2`);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(size)]);
  await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -P ${fill} 0 ${size}`, path]);
  return path;
}

/** Serves the image in this process, as vdisk serve does (discard=unmap), so the test can see the plane's counts. */
async function serve(path: string): Promise<{ s: TestServer; uri: string }> {
  const node = await open(path, { format: 'qcow2', discard: 'unmap' });
  const s = await startServer([{ node, opts: { discard: 'unmap' } }]);
  return { s, uri: `nbd+unix:///?socket=${s.socketPath}` };
}

/** qemu-io commands: writes of every shape (within a cluster, across clusters, unaligned, FUA), then zeroes, discards and more writes. */
function script(size: number): string[] {
  let seed = 42;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
  const out: string[] = [];
  const lengths = [512, 4096, 4096, 4096, 777, 8192, 65536, 70000, 131072];
  for (let i = 0; i < 400; i++) {
    const length = lengths[rand(lengths.length)]!;
    const offset = rand(size - length);
    const aligned = i % 3 === 0 ? offset - (offset % 4096) : offset;
    out.push(`write ${i % 50 === 7 ? '-f ' : ''}-P ${(i % 250) + 1} ${aligned} ${length}`);
    if (i === 150) out.push(`write -z ${2 * MiB} 256k`, `discard ${3 * MiB} 192k`, 'flush');
    if (i === 250) out.push(`write -z -u ${5 * MiB} 128k`, `discard ${6 * MiB} 64k`);
  }
  // aio writes: several in flight at once, on the plane's workers together.
  for (let i = 0; i < 64; i++) out.push(`aio_write -P ${i + 100} ${(i * 37 % 128) * 65536 + (i % 16) * 4096} 4k`);
  out.push('aio_flush', 'flush');
  return out;
}

/**
 * Runs the qemu-io commands over the plane on `served` and on a copy directly; the two images
 * must come out identical, `served` clean. Returns the writes the plane served in place.
 */
async function sameAsDirect(served: string, commands: string[]): Promise<number> {
  const direct = tmp.path(`direct${++serial}.qcow2`);
  await copyFile(served, direct);
  const args = commands.flatMap((c) => ['-c', c]);
  const { s, uri } = await serve(served);
  let mappedWrites;
  try {
    const overNbd = await run('qemu-io', ['-f', 'raw', ...WRITEBACK, ...args, uri]);
    assert.equal(overNbd.code, 0, overNbd.stderr);
    mappedWrites = s.server.stats().mappedWrites;
  } finally {
    await s.close();
  }
  const onFile = await run('qemu-io', ['-f', 'qcow2', '-d', 'unmap', ...args, direct]);
  assert.equal(onFile.code, 0, onFile.stderr);
  const check = await run('qemu-img', ['check', '-f', 'qcow2', served]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
  assert.match(await runOk('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', served, direct]), /Images are identical/);
  return mappedWrites;
}

it('qemu-io over the plane: the same image as qemu-io on a copy, and clean', { skip }, async (t) => {
  if (!needTools(t, 'qemu-io', 'qemu-img')) return;
  const size = 8 * MiB;
  const mappedWrites = await sameAsDirect(await allocatedImage(size, 0x5a), script(size));
  assert.ok(mappedWrites > 200, `${mappedWrites} writes served in place`);
});

it('clusters shared with a snapshot (qemu-img snapshot -c) are copied on write, never written in place', { skip }, async (t) => {
  if (!needTools(t, 'qemu-io', 'qemu-img')) return;
  const size = 4 * MiB;
  const served = await allocatedImage(size, 0x11);
  await runOk('qemu-img', ['snapshot', '-c', 'before', served]);
  // Two passes over the first 2 MiB: the first copies each cluster on write, the second
  // overwrites the new clusters (in place, on the plane).
  const commands: string[] = [];
  for (let pass = 0; pass < 2; pass++) {
    for (let offset = 0; offset < 2 * MiB; offset += 4096) commands.push(`write -P ${0x22 + pass} ${offset} 4k`);
  }
  assert.ok((await sameAsDirect(served, commands)) > 0, 'the second pass wrote in place');
  // The snapshot still reads as it was taken.
  const snap = tmp.path(`snap${serial}.raw`);
  await runOk('qemu-img', ['convert', '-l', 'snapshot.name=before', '-O', 'raw', served, snap]);
  const bytes = await readFile(snap);
  assert.equal(bytes.length, size);
  assert.ok(bytes.every((b) => b === 0x11), 'the snapshot keeps its data');
});

it('fio randwrite with verify=crc32c from two connections into allocated clusters: no verify errors, a clean image', { skip }, async (t) => {
  if (!needTools(t, 'fio', 'qemu-io', 'qemu-img')) return;
  const image = await allocatedImage(32 * MiB, 0x33);
  const { s, uri } = await serve(image);
  let mappedWrites;
  try {
    await fioVerify(uri, tmp.dir, 'randwrite', 32);
    mappedWrites = s.server.stats().mappedWrites;
  } finally {
    await s.close();
  }
  assert.ok(mappedWrites > 1000, `${mappedWrites} writes served in place`);
  const check = await run('qemu-img', ['check', '-f', 'qcow2', image]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
});
