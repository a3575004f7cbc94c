import assert from 'node:assert/strict';
import { readFile, truncate, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BlockNode } from '../../../../src/core/block-node.js';
import { MemoryNode } from '../../../../src/drivers/protocol/memory/index.js';
import { native } from '../../../../src/native/index.js';
import {
  NBD_CMD_BLOCK_STATUS, NBD_CMD_DISC, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FUA, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM,
  NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
} from '../../../../src/nbd/protocol.js';
import { planeFile } from '../../../../src/nbd/server/native-plane.js';
import { open } from '../../../../src/registry/index.js';
import { pattern } from '../../../helpers/bytes.js';
import { vdisk } from '../../../helpers/cli.js';
import { encodeTestRequest as encodeRequest, RawClient, ServerFixture } from '../../../helpers/nbd-server.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';

/*
 * The native data plane (native/nbd-plane-core.cc) serves raw files, and qcow2 clusters its
 * cluster map knows: the bytes it reads and writes, the replies it shapes (simple, structured,
 * sparse), what it forwards to JavaScript, the barrier that keeps it out of clusters JavaScript
 * frees and reuses, and the same hostile clients and orderly ends the JavaScript path is tested with.
 */

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 16 * MiB;

const fx = new ServerFixture();
let tmp: TmpDir;
let serial = 0;
before(async () => {
  tmp = await makeTmpDir('vdisk-nbd-plane-');
});
after(() => tmp.cleanup());

/** A fresh sparse raw file of SIZE bytes, opened as vdisk serve opens one. */
async function rawFile(opts: Parameters<typeof open>[1] = {}): Promise<{ path: string; node: BlockNode }> {
  const path = tmp.path(`d${++serial}.raw`);
  await writeFile(path, '');
  await truncate(path, SIZE);
  return { path, node: await open(path, { format: 'raw', ...opts }) };
}

/** A fresh qcow2 of SIZE bytes (64 KiB clusters), opened as vdisk serve opens one. */
async function qcow2File(opts: Parameters<typeof open>[1] = {}): Promise<{ path: string; node: BlockNode }> {
  const path = tmp.path(`d${++serial}.qcow2`);
  const made = await vdisk(['create', '-q', '-f', 'qcow2', path, String(SIZE)]);
  assert.equal(made.code, 0, made.stderr);
  return { path, node: await open(path, { format: 'qcow2', ...opts }) };
}

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await sleep(5);
}

const skip = native ? false : 'the native addon is not loaded';

describe('which exports the plane serves', { skip }, () => {
  it('a raw file with the page cache; not formats, slices, detect-zeroes or cache modes that bypass or sync', async () => {
    const plain = await rawFile();
    assert.ok(planeFile(plain.node));
    for (const opts of [{ cache: 'unsafe' as const }]) assert.ok(planeFile((await rawFile(opts)).node));
    for (const opts of [{ cache: 'none' as const }, { cache: 'writethrough' as const }, { detectZeroes: 'on' as const }, { copyOnRead: true }]) {
      assert.equal(planeFile((await rawFile(opts)).node), undefined, JSON.stringify(opts));
    }
    const slice = await open({ driver: 'raw', offset: 4096, file: { driver: 'file', filename: plain.path } });
    assert.equal(planeFile(slice), undefined, 'raw with an offset');
    assert.equal(planeFile(new MemoryNode({ size: MiB })), undefined);
  });

  it('connections to a raw file are on the plane; to a memory node, not', async () => {
    const { node } = await rawFile();
    await fx.start([{ node, opts: { name: 'raw' } }, { node: new MemoryNode({ size: MiB }), opts: { name: 'mem' } }]);
    const a = await fx.client();
    await a.negotiate('raw');
    const b = await fx.client();
    await b.negotiate('mem');
    const byName = Object.fromEntries(fx.server.stats().connections.map((c) => [c.exportName, c.native]));
    assert.deepEqual(byName, { raw: true, mem: false });
  });
});

/** Replies by cookie: reads carry their data (holes filled with zeros), others their error. */
async function collect(c: RawClient, reads: Map<bigint, { offset: number; length: number }>, count: number, structured: boolean) {
  const done = new Map<bigint, { error: number; data?: Buffer; chunks: number[] }>();
  const partial = new Map<bigint, { error: number; data?: Buffer; chunks: number[] }>();
  while (done.size < count) {
    const r = await c.reply();
    const read = reads.get(r.cookie);
    if (r.simple) {
      const data = read && r.error === 0 ? Buffer.from(await c.read(read.length)) : undefined;
      assert.ok(!structured || !read, 'structured reads get structured replies');
      done.set(r.cookie, { error: r.error, data, chunks: [] });
      continue;
    }
    const entry = partial.get(r.cookie) ?? { error: 0, data: read && Buffer.alloc(read.length), chunks: [] };
    partial.set(r.cookie, entry);
    entry.chunks.push(r.type);
    if (r.type === NBD_REPLY_TYPE_OFFSET_DATA) {
      const at = Number(r.payload.readBigUInt64BE(0)) - read!.offset;
      r.payload.copy(entry.data!, at, 8);
    } else if (r.type === NBD_REPLY_TYPE_OFFSET_HOLE) {
      const at = Number(r.payload.readBigUInt64BE(0)) - read!.offset;
      entry.data!.fill(0, at, at + r.payload.readUInt32BE(8));
    } else if (r.type === NBD_REPLY_TYPE_ERROR) {
      entry.error = r.payload.readUInt32BE(0);
    }
    if (r.flags & 1) {
      partial.delete(r.cookie);
      done.set(r.cookie, entry);
    }
  }
  return done;
}

describe('the bytes', { skip }, () => {
  for (const [format, structured] of [['raw', false], ['raw', true], ['qcow2', false], ['qcow2', true]] as const) {
    it(`${format}: random reads, writes, trims and zero writes, many at once, match a model (${structured ? 'structured' : 'simple'})`, async () => {
      // discard=unmap: trims free qcow2 clusters, and later writes take them again elsewhere.
      const { path, node } = format === 'raw' ? await rawFile({ discard: 'unmap' }) : await qcow2File({ discard: 'unmap' });
      await fx.start([{ node, opts: { discard: 'unmap' } }]);
      const c = await fx.client();
      await c.negotiate('', { structured });
      assert.equal(fx.server.stats().connections[0]!.native, true);
      const model = Buffer.alloc(SIZE);
      let seed = structured ? 7 : 11;
      const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
      const sizes = [1, 512, 4 * KiB, 5000, 64 * KiB, 64 * KiB + 1, 300 * KiB, MiB, MiB + 512, 3 * MiB];
      for (let round = 0; round < 12; round++) {
        // Writes first (all in flight at once, on ranges that do not overlap), then reads.
        const reads = new Map<bigint, { offset: number; length: number }>();
        const taken: [number, number][] = [];
        let cookie = 0n;
        for (let i = 0; i < 24; i++) {
          const length = sizes[rand(sizes.length)]!;
          const offset = rand(SIZE - length + 1);
          if (taken.some(([a, b]) => offset < b && a < offset + length)) continue;
          taken.push([offset, offset + length]);
          const kind = rand(8);
          if (kind < 5) {
            const data = pattern(length, rand(250) + 1);
            // FUA writes and writes into sector 0 are forwarded; the rest the plane does itself
            // (on qcow2, those into clusters its map marks writable in place).
            c.request({ type: NBD_CMD_WRITE, cookie: ++cookie, offset: BigInt(offset), flags: kind === 4 ? NBD_CMD_FLAG_FUA : 0 }, data);
            model.set(data, offset);
          } else {
            c.request({ type: kind === 5 ? NBD_CMD_TRIM : NBD_CMD_WRITE_ZEROES, cookie: ++cookie, offset: BigInt(offset), length });
            model.fill(0, offset, offset + length);
          }
        }
        let results = await collect(c, reads, Number(cookie), structured);
        for (const [k, r] of results) assert.equal(r.error, 0, `write ${k}`);
        cookie = 0n;
        for (let i = 0; i < 24; i++) {
          const length = sizes[rand(sizes.length)]!;
          const offset = rand(SIZE - length + 1);
          reads.set(++cookie, { offset, length });
          c.request({ type: NBD_CMD_READ, cookie, offset: BigInt(offset), length, flags: structured && i % 5 === 0 ? NBD_CMD_FLAG_DF : 0 });
        }
        // Twice: on qcow2 the first reads fill the cluster map, and the second are served from it.
        for (let pass = 0; pass < 2; pass++) {
          if (pass > 0) {
            await sleep(20);
            for (const [k, { offset, length }] of reads) c.request({ type: NBD_CMD_READ, cookie: k, offset: BigInt(offset), length });
          }
          results = await collect(c, reads, Number(cookie), structured);
          for (const [k, { offset, length }] of reads) {
            const r = results.get(k)!;
            assert.equal(r.error, 0);
            assert.ok(r.data!.equals(model.subarray(offset, offset + length)), `round ${round} pass ${pass}: read of ${length} at ${offset}`);
          }
        }
      }
      c.request({ type: NBD_CMD_FLUSH, cookie: 99n });
      assert.equal((await c.reply()).cookie, 99n);
      const { mappedReads, mappedWrites } = fx.server.stats();
      if (format === 'qcow2') assert.ok(mappedReads > 50, `${mappedReads} reads served from the cluster map`);
      if (format === 'qcow2') assert.ok(mappedWrites >= 5, `${mappedWrites} writes served in place through the cluster map`);
      if (format === 'raw') {
        assert.ok((await readFile(path)).equals(model), 'the file holds what the model does');
        return;
      }
      await fx.server.close();
      await node.close();
      const check = await vdisk(['check', path]);
      assert.equal(check.code, 0, check.stdout + check.stderr);
      const copy = tmp.path(`copy${serial}.raw`);
      assert.equal((await vdisk(['convert', '-O', 'raw', path, copy])).code, 0);
      assert.ok((await readFile(copy)).equals(model), 'the image holds what the model does');
    });
  }

  it('qcow2: a cluster read through the map, then zeroed, trimmed and its place reused, reads as the image says', async () => {
    const { node } = await qcow2File({ discard: 'unmap' });
    await fx.start([{ node, opts: { discard: 'unmap' } }]);
    const c = await fx.client();
    await c.negotiate('', { structured: false });
    const cluster = (i: number) => BigInt(i * 64 * KiB);
    const read = async (i: number, cookie: bigint) => {
      c.request({ type: NBD_CMD_READ, cookie, offset: cluster(i), length: 64 * KiB });
      const r = await c.reply();
      assert.ok(r.simple && r.error === 0 && r.cookie === cookie);
      return c.read(64 * KiB);
    };
    /** Reads until the plane serves the cluster from its map (the map fills after a forwarded read). */
    const readMapped = async (i: number) => {
      for (let n = 1n; ; n++) {
        const before = fx.server.stats().connections[0]!.mappedReads;
        const data = await read(i, n);
        if (fx.server.stats().connections[0]!.mappedReads > before) return data;
        await sleep(5);
      }
    };
    const A = pattern(64 * KiB, 1);
    const B = pattern(64 * KiB, 2);
    const C = pattern(64 * KiB, 3);
    c.request({ type: NBD_CMD_WRITE, cookie: 1n, offset: cluster(10) }, A);
    c.request({ type: NBD_CMD_WRITE, cookie: 2n, offset: cluster(11) }, A);
    await c.reply();
    await c.reply();
    assert.ok((await readMapped(10)).equals(A));
    assert.ok((await readMapped(11)).equals(A));
    // Zeroed without unmapping: the cluster keeps its place, which still holds A.
    c.request({ type: NBD_CMD_WRITE_ZEROES, cookie: 3n, offset: cluster(11), length: 64 * KiB, flags: 2 /* NO_HOLE */ });
    assert.equal((await c.reply()).cookie, 3n);
    assert.ok((await read(11, 4n)).every((b) => b === 0), 'zeroed cluster');
    // Trimmed (freed), and new clusters written: one of them may take the freed place.
    c.request({ type: NBD_CMD_TRIM, cookie: 5n, offset: cluster(10), length: 64 * KiB });
    assert.equal((await c.reply()).cookie, 5n);
    c.request({ type: NBD_CMD_WRITE, cookie: 6n, offset: cluster(20) }, B);
    c.request({ type: NBD_CMD_WRITE, cookie: 7n, offset: cluster(21) }, C);
    await c.reply();
    await c.reply();
    for (let pass = 0; pass < 3; pass++) {
      assert.ok((await read(10, 8n)).every((b) => b === 0), `trimmed cluster, pass ${pass}`);
      assert.ok((await read(11, 9n)).every((b) => b === 0), `zeroed cluster, pass ${pass}`);
      assert.ok((await read(20, 10n)).equals(B));
      assert.ok((await read(21, 11n)).equals(C));
      await sleep(10);
    }
  });

  it('qcow2: a cluster written in place, then trimmed and its place reused: writes to it never land in its old place', async () => {
    const { path, node } = await qcow2File({ discard: 'unmap' });
    await fx.start([{ node, opts: { discard: 'unmap' } }]);
    const c = await fx.client();
    await c.negotiate('', { structured: false });
    const cluster = (i: number) => i * 64 * KiB;
    let cookie = 0n;
    const write = async (offset: number, data: Uint8Array) => {
      c.request({ type: NBD_CMD_WRITE, cookie: ++cookie, offset: BigInt(offset) }, data);
      const r = await c.reply();
      assert.ok(r.simple && r.error === 0 && r.cookie === cookie);
    };
    const read = async (i: number) => {
      c.request({ type: NBD_CMD_READ, cookie: ++cookie, offset: BigInt(cluster(i)), length: 64 * KiB });
      const r = await c.reply();
      assert.ok(r.simple && r.error === 0 && r.cookie === cookie);
      return c.read(64 * KiB);
    };
    const mappedWrites = () => fx.server.stats().mappedWrites;
    /** Writes until the plane writes the cluster in place (the map fills after a forwarded write). */
    const writeInPlace = async (i: number, data: Uint8Array) => {
      for (;;) {
        const before = mappedWrites();
        await write(cluster(i), data);
        if (mappedWrites() > before) return;
        await sleep(5);
      }
    };
    const hostOf = async (i: number) => (await node.blockStatusList(cluster(i), 64 * KiB))[0]!.hostOffset;
    const A = pattern(64 * KiB, 1);
    const B = pattern(64 * KiB, 2);
    const D = pattern(64 * KiB, 4);
    await writeInPlace(10, A);
    const old = await hostOf(10);
    assert.ok(old !== undefined);
    // In-place writes in flight while the trim frees the cluster: the trim waits for them.
    for (let k = 0; k < 16; k++) c.request({ type: NBD_CMD_WRITE, cookie: 1000n + BigInt(k), offset: BigInt(cluster(10) + k * 4 * KiB) }, pattern(4 * KiB, 3));
    c.request({ type: NBD_CMD_TRIM, cookie: 2000n, offset: BigInt(cluster(10)), length: 64 * KiB });
    for (let k = 0; k <= 16; k++) {
      const r = await c.reply();
      assert.ok(r.simple && r.error === 0);
    }
    c.request({ type: NBD_CMD_FLUSH, cookie: 3000n });
    assert.equal((await c.reply()).cookie, 3000n);
    // The freed place goes to another guest cluster.
    await write(cluster(20), B);
    assert.equal(await hostOf(20), old, 'cluster 20 took the place cluster 10 had');
    // Cluster 10 again, many times (the map fills in between): never into its old place.
    for (let round = 0; round < 4; round++) {
      for (let k = 0; k < 16; k++) await write(cluster(10) + k * 4 * KiB, D.subarray(k * 4 * KiB, (k + 1) * 4 * KiB));
      await sleep(10);
    }
    await writeInPlace(10, D);
    assert.notEqual(await hostOf(10), old);
    assert.ok((await read(20)).equals(B), 'cluster 20 keeps its data');
    assert.ok((await read(10)).equals(D));
    await fx.server.close();
    await node.close();
    const check = await vdisk(['check', path]);
    assert.equal(check.code, 0, check.stdout + check.stderr);
  });

  it('a read of a hole after a read of data: a hole chunk, never the last read\'s bytes', async () => {
    const { node } = await rawFile();
    await fx.start([{ node }]);
    const c = await fx.client();
    await c.negotiate('', { structured: true });
    c.request({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0n }, pattern(128 * KiB, 3));
    assert.equal((await c.reply()).cookie, 1n);
    for (let i = 0; i < 8; i++) {
      c.request({ type: NBD_CMD_READ, cookie: 2n, offset: 0n, length: 128 * KiB });
      const data = await c.chunks();
      assert.deepEqual(data.map((d) => d.type), [NBD_REPLY_TYPE_OFFSET_DATA]);
      c.request({ type: NBD_CMD_READ, cookie: 3n, offset: BigInt(4 * MiB), length: 128 * KiB });
      const hole = await c.chunks();
      assert.deepEqual(hole.map((h) => [h.type, Number(h.payload.readBigUInt64BE(0)), h.payload.readUInt32BE(8)]), [[NBD_REPLY_TYPE_OFFSET_HOLE, 4 * MiB, 128 * KiB]]);
      // Half data, half hole: two chunks, DONE on the last only.
      c.request({ type: NBD_CMD_READ, cookie: 4n, offset: BigInt(64 * KiB), length: 128 * KiB });
      const both = await c.chunks();
      assert.deepEqual(both.map((x) => [x.type, x.flags]), [[NBD_REPLY_TYPE_OFFSET_DATA, 0], [NBD_REPLY_TYPE_OFFSET_HOLE, 1]]);
      assert.ok(both[0]!.payload.subarray(8).equals(pattern(128 * KiB, 3).subarray(64 * KiB)));
    }
  });

  it('block status after a write the plane did shows data where the file node had cached a hole', async () => {
    const { node } = await rawFile();
    await fx.start([{ node }]);
    const c = await fx.client();
    await c.negotiate('', { structured: true, contexts: ['base:allocation'] });
    const status = async (cookie: bigint) => {
      c.request({ type: NBD_CMD_BLOCK_STATUS, cookie, offset: BigInt(MiB), length: 64 * KiB });
      const [chunk] = await c.chunks();
      assert.equal(chunk!.type, NBD_REPLY_TYPE_BLOCK_STATUS);
      return [chunk!.payload.readUInt32BE(4), chunk!.payload.readUInt32BE(8)];
    };
    assert.deepEqual(await status(1n), [64 * KiB, 3], 'a hole reads as zeros');
    c.request({ type: NBD_CMD_WRITE, cookie: 2n, offset: BigInt(MiB) }, pattern(64 * KiB, 5));
    assert.equal((await c.reply()).cookie, 2n);
    assert.deepEqual(await status(3n), [64 * KiB, 0], 'data');
  });

  it('requests past the end, unknown commands and bad flags get the errors the JavaScript path gives', async () => {
    const { node } = await rawFile();
    await fx.start([{ node }]);
    const c = await fx.client();
    await c.negotiate('', { structured: false });
    c.request({ type: NBD_CMD_READ, cookie: 1n, offset: BigInt(SIZE - 512), length: 1024 });
    c.request({ type: NBD_CMD_WRITE, cookie: 2n, offset: BigInt(SIZE) }, pattern(512, 1));
    c.request({ type: 42, cookie: 3n });
    c.request({ type: NBD_CMD_READ, cookie: 4n, offset: 0n, length: 512, flags: NBD_CMD_FLAG_DF });
    c.request({ type: NBD_CMD_READ, cookie: 5n, offset: 2n ** 63n, length: 512 });
    const errors = new Map<bigint, number>();
    for (let i = 0; i < 5; i++) {
      const r = await c.reply();
      assert.ok(r.simple);
      errors.set(r.cookie, r.error);
    }
    assert.deepEqual([...errors].sort((a, b) => Number(a[0] - b[0])), [[1n, 22], [2n, 28], [3n, 22], [4n, 22], [5n, 22]]);
  });
});

describe('hostile clients and orderly ends on the plane', { skip }, () => {
  it('a client that sends reads and never reads the replies stalls itself; memory stays bounded', async () => {
    const { node } = await rawFile();
    const limits = { maxBufferedBytes: 4 * MiB, maxWriteBuffer: MiB, maxRequests: 64 };
    await fx.start([{ node }], { limits });
    const c = await fx.client();
    await c.negotiate('', { structured: false });
    c.request({ type: NBD_CMD_WRITE, cookie: 1n, offset: BigInt(SIZE - MiB) }, pattern(MiB, 4));
    assert.equal((await c.reply()).cookie, 1n);
    c.socket.pause();
    const asked = 512;
    // 1 MiB reads (the plane's own) and 2 MiB reads (forwarded) mixed.
    for (let i = 0; i < asked; i++) c.request({ type: NBD_CMD_READ, cookie: BigInt(i), offset: BigInt((i % 8) * MiB), length: i % 2 ? 2 * MiB : MiB });
    await until(() => !fx.server.stats().connections[0]!.reading);
    // The plane's workers hold a reply each while they wait for the socket (4 x 1 MiB at most).
    const peak = fx.server.stats().peakBufferedBytes;
    assert.ok(peak <= limits.maxBufferedBytes + 2 * MiB + 256 * KiB, `server held ${peak} bytes for a client that read nothing`);
    c.socket.resume();
    const seen = new Set<bigint>();
    for (let i = 0; i < asked; i++) {
      const r = await c.reply();
      assert.ok(r.simple && r.error === 0);
      seen.add(r.cookie);
      await c.read(r.cookie % 2n ? 2 * MiB : MiB);
    }
    assert.equal(seen.size, asked);
  });

  it('bad magic: requests before it are answered, then the client is dropped', async () => {
    const { node } = await rawFile();
    await fx.start([{ node }]);
    const c = await fx.client();
    await c.negotiate('', { structured: false });
    const bad = encodeRequest({ flags: 0, type: NBD_CMD_READ, cookie: 2n, offset: 0n, length: 512 });
    bad.writeUInt32BE(0x12345678, 0);
    c.write(Buffer.concat([encodeRequest({ flags: 0, type: NBD_CMD_WRITE, cookie: 1n, offset: 4096n, length: 512 }), pattern(512, 6), bad]));
    assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 1n });
    assert.equal(await c.closedByServer(), true);
  });

  it('a write longer than announced, and one announcing more than 32 MiB, end the connection; the image keeps only whole writes', async () => {
    const { path, node } = await rawFile();
    await fx.start([{ node }]);
    const c = await fx.client();
    await c.negotiate('', { structured: false });
    c.write(Buffer.concat([encodeRequest({ flags: 0, type: NBD_CMD_WRITE, cookie: 1n, offset: 4096n, length: 100 }), pattern(150, 1)]));
    assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 1n });
    assert.equal(await c.closedByServer(), true);
    const d = await fx.client();
    await d.negotiate('', { structured: false });
    d.write(encodeRequest({ flags: 0, type: NBD_CMD_WRITE, cookie: 1n, offset: 0n, length: 32 * MiB + 1 }));
    assert.equal(await d.closedByServer(), true);
    const file = await readFile(path);
    assert.ok(file.subarray(4096, 4196).equals(pattern(150, 1).subarray(0, 100)));
    assert.ok(file.subarray(4196).every((b) => b === 0) && file.subarray(0, 4096).every((b) => b === 0));
  });

  it('hundreds of clients dropping mid-request leave the server up and no partial write in the image', async () => {
    const { path, node } = await rawFile();
    await fx.start([{ node }]);
    await Promise.all(Array.from({ length: 200 }, async (_, i) => {
      const c = await RawClient.connect(fx.socketPath);
      try {
        await c.negotiate('', { structured: i % 2 === 0 });
        c.write(encodeRequest({ flags: 0, type: NBD_CMD_WRITE, cookie: 1n, offset: BigInt(4096 + i * 4096), length: 4096 }));
        c.write(pattern(1000, i + 1));
        for (let j = 0; j < 4; j++) c.request({ type: NBD_CMD_READ, cookie: BigInt(j), offset: BigInt(j * MiB), length: MiB });
      } finally {
        c.close();
      }
    }));
    await until(() => fx.server.stats().connections.length === 0);
    assert.ok((await readFile(path)).every((b) => b === 0), 'no partial write reached the image');
    const c = await fx.client();
    await c.negotiate('', { structured: false });
    c.request({ type: NBD_CMD_WRITE, cookie: 5n, offset: 4096n }, pattern(4096, 9));
    assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 5n });
  });

  it('DISC after requests: every one is answered, then the server closes; a half-close too', async () => {
    const { node } = await rawFile();
    await fx.start([{ node }]);
    const c = await fx.client();
    await c.negotiate('', { structured: false });
    for (let i = 1; i <= 32; i++) c.request({ type: NBD_CMD_WRITE, cookie: BigInt(i), offset: BigInt(i * 64 * KiB) }, pattern(64 * KiB, i));
    c.request({ type: NBD_CMD_DISC, cookie: 100n });
    c.request({ type: NBD_CMD_READ, cookie: 101n, length: 512 });
    const cookies = new Set<bigint>();
    for (let i = 0; i < 32; i++) cookies.add((await c.reply()).cookie);
    assert.equal(cookies.size, 32);
    assert.equal(await c.closedByServer(), true);
    const d = await fx.client();
    await d.negotiate('', { structured: true });
    d.request({ type: NBD_CMD_READ, cookie: 1n, offset: BigInt(64 * KiB), length: 4096 });
    d.request({ type: NBD_CMD_FLUSH, cookie: 2n });
    d.socket.end();
    const got = [(await d.reply()).cookie, (await d.reply()).cookie].sort();
    assert.deepEqual(got, [1n, 2n]);
    assert.equal(await d.closedByServer(), true);
  });

  it('the server stops gracefully with requests in flight on the plane: each one read is answered and on disk', async () => {
    const { path, node } = await rawFile();
    const { server } = await fx.start([{ node }]);
    const c = await fx.client();
    await c.negotiate('', { structured: false });
    const count = 256;
    for (let i = 0; i < count; i++) c.request({ type: NBD_CMD_WRITE, cookie: BigInt(i), offset: BigInt(MiB + i * 4096) }, pattern(4096, (i % 250) + 1));
    const first = await c.reply();
    const closing = server.close();
    const seen = new Set<bigint>([first.cookie]);
    for (;;) {
      try {
        seen.add((await c.reply()).cookie);
      } catch {
        break;
      }
    }
    await closing;
    const file = await readFile(path);
    for (const k of seen) {
      const i = Number(k);
      assert.ok(file.subarray(MiB + i * 4096, MiB + (i + 1) * 4096).equals(pattern(4096, (i % 250) + 1)), `answered write ${i} is on disk`);
    }
  });
});
