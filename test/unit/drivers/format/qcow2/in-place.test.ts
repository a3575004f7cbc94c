import assert from 'node:assert/strict';
import { open as openFile } from 'node:fs/promises';
import { after, before, it } from 'node:test';
import type { BlockNode } from '../../../../../src/core/block-node.js';
import { inPlaceRefused, inPlaceRuns } from '../../../../../src/drivers/format/qcow2/in-place.js';
import { open } from '../../../../../src/registry/index.js';
import { pattern } from '../../../../helpers/bytes.js';
import { needTools, qemuImgMap, runOk } from '../../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../../helpers/tmp.js';

/*
 * Which clusters a write may overwrite in place without the node (for the NBD data plane):
 * whole clusters, Normal and COPIED, refcount 1, inside the image file, not metadata; none on a
 * read-only, corrupt or external-data-file image. qemu-img and qemu-io make the images, and
 * qemu-img map says where the clusters lie.
 */

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 64 * KiB;

let tmp: TmpDir;
let serial = 0;
before(async () => {
  tmp = await makeTmpDir('vdisk-in-place-');
});
after(() => tmp.cleanup());

/** A fresh 8 MiB qcow2 made by qemu-img, then the qemu-io commands. */
async function image(opts: string[], ...commands: string[]): Promise<string> {
  const path = tmp.path(`i${++serial}.qcow2`);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', ...opts, path, '8M']);
  if (commands.length > 0) await runOk('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), path]);
  return path;
}

async function withNode<T>(path: string, fn: (node: BlockNode) => Promise<T>, readOnly = false): Promise<T> {
  const node = await open(path, { format: 'qcow2', readOnly });
  try {
    return await fn(node);
  } finally {
    await node.close();
  }
}

it('allocated clusters, where qemu-img map puts them; not unallocated, zero or compressed ones, nor partial ones', async (t) => {
  if (!needTools(t, 'qemu-img', 'qemu-io')) return;
  const path = await image([], 'write -P 1 0 256k', 'write -P 2 1M 64k', 'write -z 1M 64k', 'write -c -P 3 2M 64k', 'write -P 4 3M 128k');
  const map = (await qemuImgMap(path, 'qcow2')).filter((e) => e.data && !e.zero && e.offset !== undefined);
  const host = (guest: number) => {
    const e = map.find((m) => m.start <= guest && guest < m.start + m.length)!;
    return e.offset! + guest - e.start;
  };
  await withNode(path, async (node) => {
    const runs = await inPlaceRuns(node, 0, node.size);
    // Each run lies on consecutive host clusters; split them per cluster to compare with the map.
    const clusters = runs.flatMap((r) => Array.from({ length: r.length / CS }, (_, i) => [r.offset + i * CS, r.host + i * CS]));
    const want = [0, CS, 2 * CS, 3 * CS, 3 * MiB, 3 * MiB + CS].map((g) => [g, host(g)]);
    assert.deepEqual(clusters, want);
    // Only whole clusters inside the range asked about.
    assert.deepEqual(await inPlaceRuns(node, 32 * KiB, 100 * KiB), [{ offset: CS, length: CS, host: host(CS) }]);
    assert.deepEqual(await inPlaceRuns(node, 4 * MiB, MiB), []);
  });
});

it('after qemu-img snapshot -c no cluster is ours alone (COPIED clear); a copy-on-write makes one so again', async (t) => {
  if (!needTools(t, 'qemu-img', 'qemu-io')) return;
  const path = await image([], 'write -P 5 0 256k');
  await runOk('qemu-img', ['snapshot', '-c', 'before', path]);
  await withNode(path, async (node) => {
    assert.deepEqual(await inPlaceRuns(node, 0, node.size), [], 'shared with the snapshot');
    await node.write(CS + 4 * KiB, pattern(4 * KiB, 6));
    const runs = await inPlaceRuns(node, 0, node.size);
    assert.equal(runs.length, 1);
    assert.equal(runs[0]!.offset, CS);
    assert.equal(runs[0]!.length, CS);
  });
});

it('extended L2: a cluster only when every subcluster is allocated data', async (t) => {
  if (!needTools(t, 'qemu-img', 'qemu-io')) return;
  const path = await image(['-o', 'extended_l2=on,cluster_size=64k'], 'write -P 7 0 64k', 'write -P 8 68k 4k', 'write -P 9 128k 64k', 'write -z 132k 2k');
  await withNode(path, async (node) => {
    const runs = await inPlaceRuns(node, 0, node.size);
    assert.deepEqual(runs.map((r) => [r.offset, r.length]), [[0, CS]]);
  });
});

it('none on a read-only node or with an external data file', async (t) => {
  if (!needTools(t, 'qemu-img', 'qemu-io')) return;
  const path = await image([], 'write -P 1 0 128k');
  await withNode(path, async (node) => assert.deepEqual(await inPlaceRuns(node, 0, node.size), []), true);
  const data = tmp.path(`data${serial}.raw`);
  const external = await image(['-o', `data_file=${data}`], 'write -P 1 0 128k');
  await withNode(external, async (node) => assert.deepEqual(await inPlaceRuns(node, 0, node.size), []));
});

it('not a cluster an L2 entry wrongly points at metadata; none at all once a write there marks the image corrupt', async (t) => {
  if (!needTools(t, 'qemu-img', 'qemu-io')) return;
  const path = await image([], 'write -P 1 0 128k');
  // Guest cluster 1 now points at the L2 table itself, COPIED: a damaged image.
  const fh = await openFile(path, 'r+');
  try {
    const header = Buffer.alloc(48);
    await fh.read(header, 0, 48, 0);
    const l1 = Number(header.readBigUInt64BE(40));
    const entry = Buffer.alloc(8);
    await fh.read(entry, 0, 8, l1);
    const l2 = Number(entry.readBigUInt64BE(0) & 0x00fffffffffffe00n);
    entry.writeBigUInt64BE(BigInt(l2) | (1n << 63n));
    await fh.write(entry, 0, 8, l2 + 8);
  } finally {
    await fh.close();
  }
  await withNode(path, async (node) => {
    const runs = await inPlaceRuns(node, 0, node.size);
    assert.deepEqual(runs.map((r) => [r.offset, r.length]), [[0, CS]], 'cluster 1 overlaps the L2 table');
    assert.equal(inPlaceRefused(node), false);
    await assert.rejects(node.write(CS, pattern(512, 2)), /Preventing invalid write on metadata/);
    assert.equal(inPlaceRefused(node), true);
    assert.deepEqual(await inPlaceRuns(node, 0, node.size), []);
  });
});
