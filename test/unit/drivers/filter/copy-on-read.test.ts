import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import type { BlockNode } from '../../../../src/core/block-node.js';
import { BlockError } from '../../../../src/core/errors.js';
import type { Extent } from '../../../../src/core/types.js';
import { CopyOnReadNode } from '../../../../src/drivers/filter/copy-on-read/index.js';
import { createQcow2 } from '../../../../src/drivers/format/qcow2/create.js';
import { open, type NodeSpec } from '../../../../src/registry/index.js';
import { assertBytesEqual, pattern } from '../../../helpers/bytes.js';
import { openFds } from '../../../helpers/fds.js';
import { nextTurn } from '../../../helpers/test-nodes.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';

const K = 1024;
const C = 64 * K; // the top image's cluster

/** A qcow2 image (vdisk's own create) with `fill` applied through a plain open. */
async function image(tmp: TmpDir, name: string, size: number, options: Record<string, string>, fill?: (n: BlockNode) => Promise<void>): Promise<string> {
  const filename = tmp.path(name);
  await createQcow2({ filename, size, options });
  if (fill) {
    const n = await open(filename, { format: 'qcow2' });
    try {
      await fill(n);
    } finally {
      await n.close();
    }
  }
  return filename;
}

async function fixture(t: TestContext): Promise<TmpDir> {
  const tmp = await makeTmpDir('vdisk-cor-');
  t.after(() => tmp.cleanup());
  return tmp;
}

async function readAll(n: BlockNode, offset = 0, length = n.size): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await n.read(offset, buf);
  return buf;
}

/** Top-image status of each cluster: 'data', 'zero' (a zero cluster) or '-' (not in the top). */
async function topClusters(n: BlockNode, clusters: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < clusters; i++) {
    const e: Extent = await n.blockStatus(i * C, C);
    assert.equal(e.length, C, `cluster ${i} is not uniform: ${JSON.stringify(e)}`);
    out.push(e.depth === 0 && e.present ? (e.zero ? 'zero' : 'data') : '-');
  }
  return out;
}

/** Records (and optionally holds) the reads that reach `node`, the backing image of a chain. */
function spyReads(node: BlockNode): { reads: [number, number][]; hold(on: boolean): void; release(): void } {
  const reads: [number, number][] = [];
  let holding = false;
  let waiters: (() => void)[] = [];
  const orig = node.read.bind(node);
  node.read = async (offset, into, opts) => {
    reads.push([offset, into.byteLength]);
    if (holding) await new Promise<void>((resolve) => waiters.push(resolve));
    return orig(offset, into, opts);
  };
  return {
    reads,
    hold: (on) => (holding = on),
    release: () => {
      holding = false;
      for (const w of waiters.splice(0)) w();
      waiters = [];
    },
  };
}

const backingOf = (cor: BlockNode): BlockNode => (cor as CopyOnReadNode).child.backing!;

/** base (4 KiB clusters) holding `fill`, and an empty top (64 KiB clusters) over it, opened with copy-on-read. */
async function chain(tmp: TmpDir, size: number, fill: (n: BlockNode) => Promise<void>, serialise?: 'cluster' | 'request'): Promise<CopyOnReadNode> {
  await image(tmp, 'base.qcow2', size, { cluster_size: '4096' }, fill);
  const top = await image(tmp, 'top.qcow2', size, { backing_file: 'base.qcow2', backing_fmt: 'qcow2' });
  const spec: NodeSpec = { driver: 'copy-on-read', file: { driver: 'qcow2', file: top }, ...(serialise ? { serialise } : {}) };
  const node = await open(spec);
  assert.ok(node instanceof CopyOnReadNode);
  return node;
}

test('a read copies the clusters it touches from the backing chain and returns their data', async (t) => {
  const tmp = await fixture(t);
  const want = pattern(256 * K, 7);
  await using cor = await chain(tmp, 1024 * K, (n) => n.write(0, want));
  assert.equal(cor.clusterSize, C);
  const got = await readAll(cor, C + 1000, 3000);
  assertBytesEqual(got, want.subarray(C + 1000, C + 4000), 'read');
  assert.deepEqual(await topClusters(cor, 4), ['-', 'data', '-', '-']);
  // The copy is the backing's data, and later reads find it in the top image.
  assertBytesEqual(await readAll(cor.child, C, C), want.subarray(C, 2 * C), 'top image');
  // A read spanning several clusters copies each of them once.
  assertBytesEqual(await readAll(cor, 10, 3 * C), want.subarray(10, 10 + 3 * C), 'long read');
  assert.deepEqual(await topClusters(cor, 5), ['data', 'data', 'data', 'data', '-']);
});

test('all-zero backing data becomes zero clusters, and known zeros are never read from the backing', async (t) => {
  const tmp = await fixture(t);
  const data = pattern(C, 3);
  const half = new Uint8Array(C);
  half.set(pattern(C / 2, 4));
  await using cor = await chain(tmp, 1024 * K, async (n) => {
    await n.write(0, new Uint8Array(C)); // zeros written as data
    await n.writeZeroes(C, C); // zero clusters in the base
    // [2C, 3C) is unallocated in the base, which has no backing: zeros
    await n.write(3 * C, data);
    await n.write(4 * C, half);
  });
  const spy = spyReads(backingOf(cor));
  const got = await readAll(cor, 0, 5 * C);
  const want = new Uint8Array(5 * C);
  want.set(data, 3 * C);
  want.set(half, 4 * C);
  assertBytesEqual(got, want, 'read');
  assert.deepEqual(await topClusters(cor, 6), ['zero', 'zero', 'zero', 'data', 'data', '-']);
  for (const [offset, length] of spy.reads) {
    assert.ok(offset + length <= C || offset >= 3 * C, `read [${offset}, +${length}) of a range the backing reports as zeros`);
  }
  // Only [0, C) and [3C, 5C) were read from the backing, and nothing is read again.
  assert.equal(spy.reads.reduce((s, [, l]) => s + l, 0), 3 * C);
  spy.reads.length = 0;
  await readAll(cor, 0, 5 * C);
  assert.deepEqual(spy.reads, []);
});

test('a range the top image holds already is read as it is, without copying', async (t) => {
  const tmp = await fixture(t);
  await using cor = await chain(tmp, 512 * K, (n) => n.write(0, pattern(512 * K, 1)));
  const mine = pattern(C, 9);
  await cor.write(C, mine);
  const spy = spyReads(backingOf(cor));
  assertBytesEqual(await readAll(cor, C, C), mine, 'read');
  assert.deepEqual(spy.reads, []);
  assert.deepEqual(await topClusters(cor, 3), ['-', 'data', '-']);
});

test('reads past the end of a shorter backing image copy zeros as zero clusters', async (t) => {
  const tmp = await fixture(t);
  await image(tmp, 'base.qcow2', C, { cluster_size: '4096' }, (n) => n.write(0, pattern(C, 2)));
  const top = await image(tmp, 'top.qcow2', 4 * C, { backing_file: 'base.qcow2', backing_fmt: 'qcow2' });
  await using cor = await open(top, { copyOnRead: true });
  const got = await readAll(cor);
  assertBytesEqual(got.subarray(0, C), pattern(C, 2), 'backing part');
  assertBytesEqual(got.subarray(C), new Uint8Array(3 * C), 'past the backing');
  assert.deepEqual(await topClusters(cor, 4), ['data', 'zero', 'zero', 'zero']);
});

/**
 * A guest write to a cluster whose copy is in flight: the copy has read the backing data (held
 * there), the write lands in the same cluster, then the copy writes its cluster back.
 */
async function writeDuringCopy(cor: CopyOnReadNode): Promise<Uint8Array> {
  const spy = spyReads(backingOf(cor));
  spy.hold(true);
  const reading = readAll(cor, 0, 4 * K);
  while (spy.reads.length === 0) await nextTurn();
  // Only the copy's read is held: the write's own copy-on-write of the cluster goes ahead.
  spy.hold(false);
  const writing = cor.write(8 * K, pattern(4 * K, 99));
  for (let i = 0; i < 20; i++) await nextTurn();
  spy.release();
  await Promise.all([reading, writing]);
  return readAll(cor, 8 * K, 4 * K);
}

test('a guest write racing a copy-on-read is never buried under backing data', async (t) => {
  for (const serialise of ['cluster', 'request'] as const) {
    const tmp = await fixture(t);
    await using cor = await chain(tmp, 256 * K, (n) => n.write(0, pattern(256 * K, 5)), serialise);
    assertBytesEqual(await writeDuringCopy(cor), pattern(4 * K, 99), `${serialise}: the write`);
  }
});

test('control: without the copy-on-read tracker the same write is lost', async (t) => {
  const tmp = await fixture(t);
  await using cor = await chain(tmp, 256 * K, (n) => n.write(0, pattern(256 * K, 5)));
  const free = { release() {} };
  // Knock out the tracker: this is what the test above would see if copies were not serialised.
  (cor as unknown as { cor: unknown }).cor = {
    tryBegin: () => free,
    begin: async () => free,
    beginPieces: (start: number, end: number) => [{ start, end, ticket: free, ready: undefined }],
  };
  const got = await writeDuringCopy(cor);
  assert.notDeepEqual(got, pattern(4 * K, 99), 'the write survived without serialisation: the test above proves nothing');
});

/** Reader A holds clusters 0-1 (its backing read held); reader B asks for clusters 1-2. */
async function overlappingReaders(cor: CopyOnReadNode): Promise<{ bReadCluster2Early: boolean }> {
  const spy = spyReads(backingOf(cor));
  spy.hold(true);
  const a = readAll(cor, 0, 2 * C);
  while (spy.reads.length === 0) await nextTurn();
  const b = readAll(cor, C, 2 * C);
  for (let i = 0; i < 20; i++) await nextTurn();
  const bReadCluster2Early = spy.reads.some(([offset]) => offset >= 2 * C);
  spy.release();
  const [ga, gb] = await Promise.all([a, b]);
  const want = pattern(512 * K, 8);
  assertBytesEqual(ga, want.subarray(0, 2 * C), 'reader A');
  assertBytesEqual(gb, want.subarray(C, 3 * C), 'reader B');
  return { bReadCluster2Early };
}

test('per-cluster serialisation lets partly overlapping readers copy what they do not share; per-request does not', async (t) => {
  for (const serialise of ['cluster', 'request'] as const) {
    const tmp = await fixture(t);
    await using cor = await chain(tmp, 512 * K, (n) => n.write(0, pattern(512 * K, 8)), serialise);
    const r = await overlappingReaders(cor);
    assert.equal(r.bReadCluster2Early, serialise === 'cluster', serialise);
    assert.deepEqual(await topClusters(cor, 4), ['data', 'data', 'data', '-']);
  }
});

/** base ← mid ← top; the COR filter over top, with the backing nodes named 'mid' and 'base'. */
async function threeLevels(tmp: TmpDir, bottom?: string): Promise<BlockNode> {
  await image(tmp, 'base.qcow2', 4 * C, {}, async (n) => {
    await n.write(0, pattern(2 * C, 1)); // clusters 0 and 1
  });
  await image(tmp, 'mid.qcow2', 4 * C, { backing_file: 'base.qcow2', backing_fmt: 'qcow2' }, async (n) => {
    await n.write(C, pattern(2 * C, 2)); // clusters 1 and 2
  });
  const top = await image(tmp, 'top.qcow2', 4 * C, { backing_file: 'mid.qcow2', backing_fmt: 'qcow2' });
  return open({
    driver: 'copy-on-read',
    ...(bottom ? { bottom } : {}),
    file: {
      driver: 'qcow2',
      file: { driver: 'file', filename: top, 'node-name': 'top-file' },
      backing: {
        driver: 'qcow2', 'node-name': 'mid', file: tmp.path('mid.qcow2'),
        backing: { driver: 'qcow2', 'node-name': 'base', file: tmp.path('base.qcow2') },
      },
    },
  });
}

test('bottom limits copying to the layers down to it (inclusive)', async (t) => {
  const want = new Uint8Array(4 * C);
  want.set(pattern(2 * C, 1));
  want.set(pattern(2 * C, 2), C);
  for (const [bottom, clusters] of [
    ['mid', ['-', 'data', 'data', '-']],
    ['base', ['data', 'data', 'data', '-']],
    [undefined, ['data', 'data', 'data', 'zero']],
  ] as const) {
    const tmp = await fixture(t);
    await using cor = await threeLevels(tmp, bottom);
    assertBytesEqual(await readAll(cor), want, `bottom ${bottom}`);
    assert.deepEqual(await topClusters(cor, 4), clusters, `bottom ${bottom}`);
  }
});

test('a bad bottom is refused in one line, and nothing is left open', async (t) => {
  const tmp = await fixture(t);
  await (await threeLevels(tmp)).close();
  const before = openFds();
  for (const [bottom, message] of [
    ['nope', /^Bottom node 'nope' not found$/],
    ['top-file', /^Bottom node 'top-file' is not in the backing chain of '#block\d+'$/],
  ] as const) {
    await assert.rejects(threeLevels(tmp, bottom), (err: unknown) => {
      assert.ok(err instanceof BlockError);
      assert.equal(err.code, 'EINVAL');
      assert.match(err.message, message);
      return true;
    });
  }
  await assert.rejects(open({ driver: 'copy-on-read', serialise: 'sometimes', file: tmp.path('top.qcow2') }), /serialise/);
  await assert.rejects(open({ driver: 'copy-on-read' }), /'file' child is required/);
  assert.ok(openFds() <= before, 'failed opens leaked descriptors');
});

test('copy-on-read needs a writable image', async (t) => {
  const tmp = await fixture(t);
  await image(tmp, 'base.qcow2', C, {});
  const top = await image(tmp, 'top.qcow2', C, { backing_file: 'base.qcow2', backing_fmt: 'qcow2' });
  const before = openFds();
  await assert.rejects(open(top, { copyOnRead: true, readOnly: true }), { code: 'EROFS', message: "Can't use copy-on-read on read-only device" });
  await assert.rejects(open({ driver: 'copy-on-read', 'read-only': 'on', file: top }), { code: 'EROFS', message: 'Block node is read-only' });
  await assert.rejects(open({ driver: 'qcow2', 'read-only': 'on', 'copy-on-read': 'on', file: top }), { code: 'EROFS' });
  assert.ok(openFds() <= before, 'failed opens leaked descriptors');
});

test('copy-on-read=on in a spec and the copyOnRead open option insert the filter, implicitly', async (t) => {
  const tmp = await fixture(t);
  await image(tmp, 'base.qcow2', 2 * C, {}, (n) => n.write(0, pattern(2 * C, 4)));
  const top = await image(tmp, 'top.qcow2', 2 * C, { backing_file: 'base.qcow2', backing_fmt: 'qcow2' });
  for (const opened of [() => open(top, { copyOnRead: true, detectZeroes: 'on' }), () => open({ driver: 'qcow2', 'copy-on-read': 'on', file: top })]) {
    await using n = await opened();
    assert.ok(n instanceof CopyOnReadNode);
    assert.equal(n.implicit, true);
    assert.equal(n.child.driver, 'qcow2');
    await readAll(n, 0, 10);
    assert.deepEqual(await topClusters(n, 2), ['data', '-']);
  }
  await using explicit = await open({ driver: 'copy-on-read', file: top });
  assert.equal((explicit as CopyOnReadNode).implicit, false);
});

test('writes, zero writes and discards pass through, and block status is the image below', async (t) => {
  const tmp = await fixture(t);
  await using cor = await chain(tmp, 256 * K, (n) => n.write(0, pattern(256 * K, 6)));
  await cor.write(100, pattern(50, 1));
  await cor.writeZeroes(C, C);
  await cor.discard(2 * C, C);
  const want = pattern(256 * K, 6);
  want.set(pattern(50, 1), 100);
  want.fill(0, C, 3 * C);
  assertBytesEqual(await readAll(cor), want, 'contents');
  assert.deepEqual(await topClusters(cor, 4), ['data', 'zero', 'zero', 'data']);
});
