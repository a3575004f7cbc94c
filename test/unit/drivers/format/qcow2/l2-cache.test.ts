/**
 * The L2 cache as an open image uses it: slices of l2-cache-entry-size, a bounded number of
 * them, and cache-clean-interval dropping the unused ones. Observed through the node's debug
 * events (`l2.load` for every slice read from disk, `cache.clean` for every cleaning pass),
 * on images vdisk creates and writes itself; QEMU's view of the same options is in
 * test/interop/drivers/qcow2/cache-options.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { BlockNode } from '../../../../../src/core/block-node.js';
import { Qcow2Node } from '../../../../../src/drivers/format/qcow2/qcow2-node.js';
import { open, type NodeSpec } from '../../../../../src/registry/index.js';
import { pattern } from '../../../../helpers/bytes.js';
import { vdisk } from '../../../../helpers/cli.js';
import { makeTmpDir, type TmpDir } from '../../../../helpers/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const CLUSTER = 64 * KiB;
/** One L2 table maps 512 MiB of guest space with 64 KiB clusters; a 4 KiB slice, 32 MiB. */
const TABLE_SPAN = 512 * MiB;
const SLICE_SPAN = 32 * MiB;

let tmp: TmpDir;

async function create(name: string, size: number): Promise<string> {
  const file = tmp.path(name);
  const r = await vdisk(['create', '-q', '-f', 'qcow2', file, String(size)]);
  assert.equal(r.code, 0, r.stderr);
  return file;
}

async function openWith(file: string, options: Record<string, unknown>): Promise<BlockNode> {
  return open({ driver: 'qcow2', file, ...options } as NodeSpec);
}

/** Records the `l2.load` events of a node: [offset, length] per slice read. */
function loads(node: BlockNode): [number, number][] {
  const seen: [number, number][] = [];
  node.events.on('l2.load', (d: { offset: number; length: number }) => seen.push([d.offset, d.length]));
  return seen;
}

async function readBack(node: BlockNode, offset: number, expect: Uint8Array): Promise<void> {
  const got = new Uint8Array(expect.byteLength);
  await node.read(offset, got);
  assert.deepEqual(got, expect, `bytes at ${offset}`);
}

before(async () => {
  tmp = await makeTmpDir('vdisk-l2-cache-');
});
after(() => tmp.cleanup());

describe('qcow2 L2 cache', () => {
  it('reads and writes through small slices and a two-entry cache, and the image stays consistent', async () => {
    const file = await create('slices.qcow2', 4 * GiB);
    // Data in many slices of many tables, written through a cache that holds two 512-byte slices.
    const spots = Array.from({ length: 40 }, (_, i) => ({ offset: (i * 97 + 13) * SLICE_SPAN / 8 + (i % 3) * 4096, data: pattern(3 * CLUSTER + 512 * (i % 5), i + 1) }))
      .filter((s) => s.offset + s.data.byteLength <= 4 * GiB);
    let node = await openWith(file, { 'l2-cache-entry-size': 512, 'l2-cache-size': 1024 });
    for (const s of spots) await node.write(s.offset, s.data);
    for (const s of spots) await readBack(node, s.offset, s.data);
    await node.close();
    // Whole-table entries, no options: the same bytes, and check finds nothing wrong.
    node = await openWith(file, {});
    for (const s of spots) await readBack(node, s.offset, s.data);
    assert.ok(node instanceof Qcow2Node);
    const result = await node.check('none');
    assert.deepEqual([result.corruptions, result.leaks, result.checkErrors], [0, 0, 0]);
    await node.close();
  });

  it('loads one slice of l2-cache-entry-size per miss, and a slice again once evicted', async () => {
    const file = await create('loads.qcow2', 2 * GiB);
    let node = await openWith(file, {});
    const spots = [0, SLICE_SPAN, TABLE_SPAN, TABLE_SPAN + 3 * SLICE_SPAN];
    for (const [i, offset] of spots.entries()) await node.write(offset, pattern(CLUSTER, i + 7));
    await node.close();

    node = await openWith(file, { 'l2-cache-entry-size': 4096, 'l2-cache-size': 8192 });
    const seen = loads(node);
    for (const [i, offset] of spots.entries()) await readBack(node, offset, pattern(CLUSTER, i + 7));
    assert.equal(seen.length, 4, 'four slices');
    assert.ok(seen.every(([, length]) => length === 4096));
    assert.equal(new Set(seen.map(([offset]) => offset - (offset % CLUSTER))).size, 2, 'in two L2 tables');
    // The cache holds two slices: the last two read are hits, the first two load again.
    await readBack(node, spots[3]!, pattern(CLUSTER, 10));
    await readBack(node, spots[2]!, pattern(CLUSTER, 9));
    assert.equal(seen.length, 4);
    await readBack(node, spots[0]!, pattern(CLUSTER, 7));
    assert.equal(seen.length, 5);
    await node.close();
  });

  it('cache-clean-interval drops slices left unused for an interval', async () => {
    const file = await create('clean.qcow2', GiB);
    let node = await openWith(file, {});
    await node.write(0, pattern(CLUSTER, 3));
    await node.close();

    node = await openWith(file, { 'cache-clean-interval': 1 });
    const seen = loads(node);
    const cleaned: { l2: number; refcount: number }[] = [];
    let dropped!: () => void;
    const wasDropped = new Promise<void>((resolve) => (dropped = resolve));
    node.events.on('cache.clean', (d: { l2: number; refcount: number }) => {
      cleaned.push(d);
      if (d.l2 > 0) dropped();
    });
    await readBack(node, 0, pattern(CLUSTER, 3));
    assert.equal(seen.length, 1);
    // The cleaning timer does not keep the process alive; this does, until the slice is dropped.
    const alive = setInterval(() => {}, 1000);
    await wasDropped;
    clearInterval(alive);
    assert.equal(cleaned.at(-1)!.l2, 1);
    await readBack(node, 0, pattern(CLUSTER, 3));
    assert.equal(seen.length, 2, 'the dropped slice is read again');
    await node.close();
  });

  it('refuses invalid cache options with one-line errors', async () => {
    const file = await create('bad.qcow2', GiB);
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ 'l2-cache-entry-size': 1000 }, /^L2 cache entry size must be a power of two between 512 and the cluster size \(65536\)$/],
      [{ 'l2-cache-entry-size': '128k' }, /^L2 cache entry size must be a power of two/],
      [{ 'l2-cache-size': 'lots' }, /^Parameter 'l2-cache-size' expects a non-negative number below 2\^64/],
      [{ 'cache-clean-interval': 'soon' }, /^Parameter 'cache-clean-interval' expects a number$/],
      [{ 'cache-clean-interval': '-1' }, /^Cache clean interval too big$/],
      [{ 'cache-size': '1M', 'l2-cache-size': '2M' }, /^l2-cache-size may not exceed cache-size$/],
    ];
    for (const [options, message] of cases) {
      await assert.rejects(openWith(file, options), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EINVAL', JSON.stringify(options));
        assert.match(err.message, message);
        assert.doesNotMatch(err.message, /\n/);
        return true;
      });
    }
    // Sizes take QEMU's suffixes and fractions.
    const node = await openWith(file, { 'l2-cache-size': '1.5M', 'l2-cache-entry-size': '4k', 'refcount-cache-size': '256K' });
    await node.close();
  });
});
