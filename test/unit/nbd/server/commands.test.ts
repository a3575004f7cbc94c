import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryNode } from '../../../../src/drivers/protocol/memory/index.js';
import type { Extent } from '../../../../src/core/types.js';
import {
  NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_EINVAL,
  NBD_ENOSPC, NBD_ENOTSUP, NBD_EPERM, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
} from '../../../../src/nbd/protocol.js';
import type { ExportOptions } from '../../../../src/nbd/server/index.js';
import { pattern } from '../../../helpers/bytes.js';
import { ServerFixture, type Chunk, type RawClient } from '../../../helpers/nbd-server.js';
import { RecordingNode } from '../../../helpers/test-nodes.js';
import type { BlockNode } from '../../../../src/core/block-node.js';

/*
 * Transmission commands through a real socket: the replies the spec asks for, the options each
 * command passes to the node, and the errors for what a client must not do.
 */

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = MiB;

const fx = new ServerFixture();

async function serve(node: BlockNode, opts: ExportOptions = {}, negotiate: { structured?: boolean; contexts?: string[] } = {}): Promise<RawClient> {
  await fx.start([{ node, opts }]);
  const c = await fx.client();
  await c.negotiate('', negotiate);
  return c;
}

async function simpleError(c: RawClient): Promise<number> {
  const r = await c.reply();
  assert.ok(r.simple, 'expected a simple reply');
  return r.error;
}

/** The error of a reply that may be simple (success) or a structured error chunk. */
async function anyError(c: RawClient): Promise<number> {
  const r = await c.reply();
  if (r.simple) return r.error;
  assert.equal(r.type, NBD_REPLY_TYPE_ERROR);
  assert.ok(r.payload.readUInt16BE(4) > 0, 'an error chunk carries a message');
  return r.payload.readUInt32BE(0);
}

describe('simple replies', () => {
  it('writes and reads back, with cookies echoed', async () => {
    const c = await serve(new MemoryNode({ size: SIZE }), {}, { structured: false });
    const data = pattern(12345, 1);
    c.request({ type: NBD_CMD_WRITE, cookie: 0xdeadbeefcafen, offset: 1000n }, data);
    assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 0xdeadbeefcafen });
    c.request({ type: NBD_CMD_READ, cookie: 7n, offset: 1000n, length: data.length });
    assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 7n });
    assert.deepEqual(new Uint8Array(await c.read(data.length)), data);
  });

  it('answers what a client must not send with EINVAL, ENOSPC or EPERM and goes on', async () => {
    const c = await serve(new MemoryNode({ size: SIZE }), {}, { structured: false });
    c.request({ type: NBD_CMD_READ, offset: BigInt(SIZE - 10), length: 11 });
    assert.equal(await simpleError(c), NBD_EINVAL);
    c.request({ type: NBD_CMD_READ, offset: 1n << 63n, length: 1 });
    assert.equal(await simpleError(c), NBD_EINVAL);
    // The payload of a refused write is consumed: the next request parses.
    c.request({ type: NBD_CMD_WRITE, offset: BigInt(SIZE - 10) }, pattern(11, 2));
    assert.equal(await simpleError(c), NBD_ENOSPC);
    c.request({ type: NBD_CMD_WRITE_ZEROES, offset: BigInt(SIZE), length: 1 });
    assert.equal(await simpleError(c), NBD_ENOSPC);
    c.request({ type: NBD_CMD_TRIM, offset: BigInt(SIZE), length: 1 });
    assert.equal(await simpleError(c), NBD_EINVAL);
    c.request({ type: 99 });
    assert.equal(await simpleError(c), NBD_EINVAL);
    c.request({ type: NBD_CMD_WRITE, flags: 0x8000, offset: 0n }, pattern(8, 3));
    assert.equal(await simpleError(c), NBD_EINVAL);
    c.request({ type: NBD_CMD_READ, flags: NBD_CMD_FLAG_DF, length: 8 });
    assert.equal(await simpleError(c), NBD_EINVAL, 'DF needs structured replies');
    c.request({ type: NBD_CMD_READ, length: 32 * MiB + 1 });
    assert.equal(await simpleError(c), NBD_EINVAL);
    c.request({ type: NBD_CMD_BLOCK_STATUS, length: 512 });
    assert.equal(await simpleError(c), NBD_EINVAL, 'no metadata context was set');
    c.request({ type: NBD_CMD_READ, offset: BigInt(SIZE - 4), length: 4, cookie: 9n });
    assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 9n });
    assert.deepEqual([...await c.read(4)], [0, 0, 0, 0], 'the refused writes left nothing behind');
  });

  it('a read-only export refuses writes, zeroes and trims with EPERM, and reads and flushes', async () => {
    const node = new MemoryNode({ size: SIZE });
    const c = await serve(node, { readOnly: true }, { structured: false });
    c.request({ type: NBD_CMD_WRITE, offset: 0n }, pattern(16, 4));
    assert.equal(await simpleError(c), NBD_EPERM);
    c.request({ type: NBD_CMD_WRITE_ZEROES, length: 16 });
    assert.equal(await simpleError(c), NBD_EPERM);
    c.request({ type: NBD_CMD_TRIM, length: 16 });
    assert.equal(await simpleError(c), NBD_EPERM);
    c.request({ type: NBD_CMD_FLUSH });
    assert.equal(await simpleError(c), 0);
    c.request({ type: NBD_CMD_READ, length: 16 });
    assert.equal(await simpleError(c), 0);
    assert.deepEqual([...await c.read(16)], new Array(16).fill(0));
  });
});

/** A node whose first half is data and second half a zero hole (at depth 1 in a backing file). */
function halfHoleNode(): RecordingNode {
  const status = (offset: number, maxLength: number): Extent => offset < SIZE / 2
    ? { offset, length: Math.min(maxLength, SIZE / 2 - offset), data: true, zero: false, present: true, depth: 0 }
    : { offset, length: maxLength, data: false, zero: true, present: false, depth: 1 };
  const node = new RecordingNode({ size: SIZE, status });
  node.bytes.set(pattern(SIZE / 2, 5));
  return node;
}

describe('structured replies', () => {
  it('sends zero ranges of a read as OFFSET_HOLE and the rest as OFFSET_DATA, DONE on the last', async () => {
    const node = halfHoleNode();
    const c = await serve(node);
    c.request({ type: NBD_CMD_READ, offset: BigInt(SIZE / 2 - 64 * KiB), length: 128 * KiB, cookie: 5n });
    const chunks = await c.chunks();
    assert.deepEqual(chunks.map((ch) => [ch.type, ch.flags, ch.cookie]),
      [[NBD_REPLY_TYPE_OFFSET_DATA, 0, 5n], [NBD_REPLY_TYPE_OFFSET_HOLE, 1, 5n]]);
    assert.equal(chunks[0]!.payload.readBigUInt64BE(0), BigInt(SIZE / 2 - 64 * KiB));
    assert.deepEqual(new Uint8Array(chunks[0]!.payload.subarray(8)), node.bytes.subarray(SIZE / 2 - 64 * KiB, SIZE / 2));
    assert.equal(chunks[1]!.payload.readBigUInt64BE(0), BigInt(SIZE / 2));
    assert.equal(chunks[1]!.payload.readUInt32BE(8), 64 * KiB);
  });

  it('DF gets one data chunk with the zeros spelled out', async () => {
    const node = halfHoleNode();
    const c = await serve(node);
    c.request({ type: NBD_CMD_READ, flags: NBD_CMD_FLAG_DF, offset: BigInt(SIZE / 2 - 64 * KiB), length: 128 * KiB });
    const chunks = await c.chunks();
    assert.deepEqual(chunks.map((ch) => ch.type), [NBD_REPLY_TYPE_OFFSET_DATA]);
    assert.equal(chunks[0]!.payload.length, 8 + 128 * KiB);
    assert.ok(chunks[0]!.payload.subarray(8 + 64 * KiB).every((b) => b === 0));
  });

  it('errors are error chunks with a message', async () => {
    const c = await serve(new MemoryNode({ size: SIZE }));
    c.request({ type: NBD_CMD_READ, offset: BigInt(SIZE), length: 1, cookie: 3n });
    const [chunk] = await c.chunks();
    assert.equal(chunk!.type, NBD_REPLY_TYPE_ERROR);
    assert.equal(chunk!.cookie, 3n);
    assert.equal(chunk!.payload.readUInt32BE(0), NBD_EINVAL);
    assert.match(chunk!.payload.subarray(6).toString(), /past the end/);
  });
});

describe('write-like commands reach the node with the right options', () => {
  it('WRITE_ZEROES: NO_HOLE forbids unmapping, discard=ignore never unmaps, FAST_ZERO is noFallback, FUA flushes', async () => {
    const node = new RecordingNode({ size: SIZE });
    const c = await serve(node, { discard: 'unmap' });
    const zeroOpts = async (flags: number) => {
      node.calls.length = 0;
      c.request({ type: NBD_CMD_WRITE_ZEROES, flags, offset: 4096n, length: 4096 });
      assert.equal(await anyError(c), 0);
      return node.callsOf('writeZeroes')[0]!.opts;
    };
    assert.equal((await zeroOpts(0))!.mayUnmap, true);
    assert.equal((await zeroOpts(NBD_CMD_FLAG_NO_HOLE))!.mayUnmap, false);
    assert.equal((await zeroOpts(NBD_CMD_FLAG_FAST_ZERO))!.noFallback, true);
    await zeroOpts(NBD_CMD_FLAG_FUA);
    assert.equal(node.callsOf('flush').length, 1, 'FUA became write + flush');
  });

  it('discard=ignore: TRIM succeeds without deallocating and zero writes do not unmap', async () => {
    const node = new RecordingNode({ size: SIZE });
    node.bytes.fill(7);
    const c = await serve(node);
    c.request({ type: NBD_CMD_TRIM, offset: 0n, length: 4096 });
    assert.equal(await anyError(c), 0);
    assert.equal(node.callsOf('discard').length, 0);
    assert.equal(node.bytes[0], 7);
    c.request({ type: NBD_CMD_WRITE_ZEROES, offset: 0n, length: 4096 });
    assert.equal(await anyError(c), 0);
    assert.equal(node.callsOf('writeZeroes')[0]!.opts!.mayUnmap, false);
  });

  it('discard=unmap: TRIM discards', async () => {
    const node = new RecordingNode({ size: SIZE });
    const c = await serve(node, { discard: 'unmap' });
    c.request({ type: NBD_CMD_TRIM, offset: 8192n, length: 4096 });
    assert.equal(await anyError(c), 0);
    assert.deepEqual(node.callsOf('discard').map((x) => [x.offset, x.length]), [[8192, 4096]]);
  });

  it('FAST_ZERO that the node cannot do fast fails with ENOTSUP and writes nothing', async () => {
    const node = new RecordingNode({ size: SIZE, refuseZero: () => true });
    node.bytes.fill(9);
    const c = await serve(node);
    c.request({ type: NBD_CMD_WRITE_ZEROES, flags: NBD_CMD_FLAG_FAST_ZERO, offset: 0n, length: 65536 });
    assert.equal(await anyError(c), NBD_ENOTSUP);
    assert.ok(node.bytes.subarray(0, 65536).every((b) => b === 9));
    // Without FAST_ZERO the same request falls back to writing zeros.
    c.request({ type: NBD_CMD_WRITE_ZEROES, offset: 0n, length: 65536 });
    assert.equal(await anyError(c), 0);
    assert.ok(node.bytes.subarray(0, 65536).every((b) => b === 0));
  });

  it('WRITE with FUA is durable before the reply (write then flush)', async () => {
    const node = new RecordingNode({ size: SIZE });
    const c = await serve(node);
    c.request({ type: NBD_CMD_WRITE, flags: NBD_CMD_FLAG_FUA, offset: 0n }, pattern(512, 6));
    assert.equal(await anyError(c), 0);
    assert.deepEqual(node.calls.map((x) => x.hook), ['write', 'flush']);
  });

  it('CACHE reads the range (warming the caches below) and checks it', async () => {
    const node = new RecordingNode({ size: SIZE });
    const c = await serve(node);
    c.request({ type: NBD_CMD_CACHE, offset: 0n, length: SIZE });
    assert.equal(await anyError(c), 0);
    assert.equal(node.callsOf('read').reduce((n, x) => n + x.length!, 0), SIZE);
    c.request({ type: NBD_CMD_CACHE, offset: 1n, length: SIZE });
    assert.equal(await anyError(c), NBD_EINVAL);
  });
});

describe('block status', () => {
  const descriptors = (chunk: Chunk) => {
    const out: [number, number][] = [];
    for (let at = 4; at < chunk.payload.length; at += 8) out.push([chunk.payload.readUInt32BE(at), chunk.payload.readUInt32BE(at + 4)]);
    return { id: chunk.payload.readUInt32BE(0), out };
  };

  it('base:allocation and qemu:allocation-depth: one chunk per context, DONE on the last', async () => {
    const c = await serve(halfHoleNode(), { allocationDepth: true }, { contexts: ['base:allocation', 'qemu:allocation-depth'] });
    c.request({ type: NBD_CMD_BLOCK_STATUS, offset: 4096n, length: SIZE - 4096 });
    const chunks = await c.chunks();
    assert.deepEqual(chunks.map((ch) => [ch.type, ch.flags]), [[NBD_REPLY_TYPE_BLOCK_STATUS, 0], [NBD_REPLY_TYPE_BLOCK_STATUS, 1]]);
    assert.deepEqual(descriptors(chunks[0]!), { id: 0, out: [[SIZE / 2 - 4096, 0], [SIZE / 2, 3]] });
    assert.deepEqual(descriptors(chunks[1]!), { id: 1, out: [[SIZE / 2 - 4096, 1], [SIZE / 2, 0]] });
  });

  it('REQ_ONE gives exactly one extent, not longer than asked', async () => {
    const c = await serve(halfHoleNode(), {}, { contexts: ['base:allocation'] });
    c.request({ type: NBD_CMD_BLOCK_STATUS, flags: NBD_CMD_FLAG_REQ_ONE, offset: 0n, length: 1000 });
    assert.deepEqual(descriptors((await c.chunks())[0]!).out, [[1000, 0]]);
    c.request({ type: NBD_CMD_BLOCK_STATUS, flags: NBD_CMD_FLAG_REQ_ONE, offset: 0n, length: SIZE });
    assert.deepEqual(descriptors((await c.chunks())[0]!).out, [[SIZE / 2, 0]]);
  });

  it('past the end or empty is EINVAL', async () => {
    const c = await serve(halfHoleNode(), {}, { contexts: ['base:allocation'] });
    c.request({ type: NBD_CMD_BLOCK_STATUS, offset: BigInt(SIZE), length: 1 });
    assert.equal(await anyError(c), NBD_EINVAL);
    c.request({ type: NBD_CMD_BLOCK_STATUS, offset: 0n, length: 0 });
    assert.equal(await anyError(c), NBD_EINVAL);
  });
});

it('requests run concurrently: a flush is answered while a slow read is still in flight', async () => {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const node = new RecordingNode({ size: SIZE, delay: () => gate });
  const c = await serve(node, {}, { structured: false });
  c.request({ type: NBD_CMD_READ, cookie: 1n, length: 4096 });
  c.request({ type: NBD_CMD_FLUSH, cookie: 2n });
  assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 2n });
  release();
  assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 1n });
  assert.equal((await c.read(4096)).length, 4096);
});
