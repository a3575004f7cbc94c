import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { MemoryNode } from '../../../../src/drivers/protocol/memory/index.js';
import { NBD_CMD_DISC, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_WRITE } from '../../../../src/nbd/protocol.js';
import type { NbdServer } from '../../../../src/nbd/server/index.js';
import { pattern } from '../../../helpers/bytes.js';
import { encodeTestRequest as encodeRequest, RawClient, ServerFixture } from '../../../helpers/nbd-server.js';
import { vdisk } from '../../../helpers/cli.js';
import { makeTmpDir } from '../../../helpers/tmp.js';
import { open } from '../../../../src/registry/index.js';
import { RecordingNode } from '../../../helpers/test-nodes.js';

/*
 * Flow control and hostile clients on one connection: a client that never reads, payloads that
 * lie about their length, clients that vanish mid-request, and the orderly ends (DISC, FIN).
 */

const KiB = 1024;
const MiB = 1024 * KiB;

const fx = new ServerFixture();

async function connect(): Promise<RawClient> {
  const c = await fx.client();
  await c.negotiate('', { structured: false });
  return c;
}

/** Polls until `cond` holds (the test runner's timeout catches a hang; nothing here is timed). */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await sleep(5);
}

const settled = (server: NbdServer) => () => {
  const [conn] = server.stats().connections;
  return conn !== undefined && !conn.reading && conn.inFlight === 0;
};

it('a client that sends reads and never reads the replies stalls itself; server memory stays bounded', async () => {
  const limits = { maxBufferedBytes: 4 * MiB, maxWriteBuffer: MiB, maxRequests: 64 };
  await fx.start([{ node: new MemoryNode({ size: 64 * MiB }) }], { limits });
  const c = await connect();
  c.socket.pause();
  const asked = 512;
  for (let i = 0; i < asked; i++) c.request({ type: NBD_CMD_READ, cookie: BigInt(i), offset: BigInt((i % 64) * MiB), length: MiB });
  // The server stops reading requests: nothing in flight, replies waiting in the socket.
  await until(settled(fx.server));
  const peak = fx.server.stats().peakBufferedBytes;
  assert.ok(peak <= limits.maxBufferedBytes + limits.maxWriteBuffer + 2 * MiB,
    `server held ${peak} bytes for a client that asked for ${asked} MiB and read none`);
  // The client reads at last: every reply arrives, in full.
  c.socket.resume();
  const seen = new Set<bigint>();
  for (let i = 0; i < asked; i++) {
    const r = await c.reply();
    assert.ok(r.simple && r.error === 0);
    seen.add(r.cookie);
    await c.read(MiB);
  }
  assert.equal(seen.size, asked);
});

for (const structured of [false, true]) {
  it(`read buffers are reused only once sent: replies held back by a slow client keep their data (${structured ? 'structured' : 'simple'})`, async () => {
    // Few requests at a time under a roomy write buffer: the server keeps serving reads (reusing
    // the buffers of replies the kernel has taken) while other replies still wait in the socket.
    await fx.start([{ node: new MemoryNode({ size: 4 * MiB }) }], { limits: { maxRequests: 16, maxWriteBuffer: 2 * MiB } });
    const c = await fx.client();
    await c.negotiate('', { structured });
    const image = pattern(4 * MiB, 7);
    c.request({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0n }, image);
    assert.equal((await c.reply()).cookie, 1n);
    c.socket.pause();
    const count = 2000;
    const offsetOf = (i: number) => ((i * 7919) % 1024) * 4 * KiB;
    for (let i = 0; i < count; i++) c.request({ type: NBD_CMD_READ, cookie: BigInt(i), offset: BigInt(offsetOf(i)), length: 4 * KiB });
    await until(() => !fx.server.stats().connections[0]!.reading);
    c.socket.resume();
    for (let i = 0; i < count; i++) {
      const r = await c.reply();
      const data = r.simple ? await c.read(4 * KiB) : r.payload.subarray(8);
      const at = offsetOf(Number(r.cookie));
      assert.ok(data.equals(image.subarray(at, at + 4 * KiB)), `reply ${r.cookie} (offset ${at}) carries the data of its own offset`);
    }
  });
}

it('a write whose payload is longer than announced: the extra bytes are a bad header and the client is dropped', async () => {
  const node = new MemoryNode({ size: MiB });
  await fx.start([{ node }]);
  const c = await connect();
  const header = encodeRequest({ flags: 0, type: NBD_CMD_WRITE, cookie: 1n, offset: 0n, length: 100 });
  c.write(Buffer.concat([header, pattern(150, 1)]));
  assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 1n });
  assert.equal(await c.closedByServer(), true);
  assert.deepEqual(node.contents.subarray(0, 100), pattern(150, 1).subarray(0, 100));
  assert.ok(node.contents.subarray(100).every((b) => b === 0));
  await connect();
});

it('a write announcing more than 32 MiB is dropped before the server buffers it', async () => {
  await fx.start([{ node: new MemoryNode({ size: 64 * MiB }) }]);
  const c = await connect();
  c.write(encodeRequest({ flags: 0, type: NBD_CMD_WRITE, cookie: 1n, offset: 0n, length: 32 * MiB + 1 }));
  assert.equal(await c.closedByServer(), true);
});

it('hundreds of clients dropping mid-request leave the server up and the image as the finished writes left it', async () => {
  const node = new MemoryNode({ size: 16 * MiB });
  await fx.start([{ node }]);
  const drops: Promise<void>[] = [];
  for (let i = 0; i < 200; i++) {
    drops.push((async () => {
      const c = await RawClient.connect(fx.socketPath);
      try {
        await c.negotiate('', { structured: i % 2 === 0 });
        // Half a write (never executed), and reads whose replies nobody will read.
        c.write(encodeRequest({ flags: 0, type: NBD_CMD_WRITE, cookie: 1n, offset: BigInt(i * 4096), length: 4096 }));
        c.write(pattern(1000, i + 1));
        for (let j = 0; j < 4; j++) c.request({ type: NBD_CMD_READ, cookie: BigInt(j), offset: BigInt(j * MiB), length: MiB });
      } finally {
        c.close();
      }
    })());
  }
  await Promise.all(drops);
  await until(() => fx.server.stats().connections.length === 0);
  assert.ok(node.contents.every((b) => b === 0), 'no partial write reached the image');
  const c = await connect();
  c.request({ type: NBD_CMD_WRITE, cookie: 5n, offset: 0n }, pattern(4096, 9));
  assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 5n });
});

it('a qcow2 image served to clients that write and vanish mid-request checks clean afterwards', async () => {
  const tmp = await makeTmpDir();
  try {
    const file = tmp.path('d.qcow2');
    assert.equal((await vdisk(['create', '-q', '-f', 'qcow2', file, '16M'])).code, 0);
    const node = await open(file);
    await fx.start([{ node }]);
    await Promise.all(Array.from({ length: 100 }, async (_, i) => {
      const c = await RawClient.connect(fx.socketPath);
      try {
        await c.negotiate('', { structured: false });
        // Whole writes that allocate clusters, then one cut short, then gone.
        for (let j = 0; j < 3; j++) c.request({ type: NBD_CMD_WRITE, cookie: BigInt(j), offset: BigInt(((i * 3 + j) % 256) * 65536) }, pattern(65536, i + j));
        c.write(encodeRequest({ flags: 0, type: NBD_CMD_WRITE, cookie: 9n, offset: BigInt(i * 4096), length: 65536 }));
        c.write(pattern(30000, 1));
        if (i % 2) await c.reply();
      } finally {
        c.close();
      }
    }));
    await until(() => fx.server.stats().connections.length === 0);
    await fx.server.close();
    await node.close();
    const check = await vdisk(['check', file]);
    assert.equal(check.code, 0, check.stdout + check.stderr);
    assert.match(check.stdout, /No errors were found on the image/);
  } finally {
    await tmp.cleanup();
  }
});

describe('orderly ends', () => {
  it('DISC: requests in flight are answered, then the server closes', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    await fx.start([{ node: new RecordingNode({ size: MiB, delay: () => gate }) }]);
    const c = await connect();
    c.request({ type: NBD_CMD_READ, cookie: 1n, length: 512 });
    c.request({ type: NBD_CMD_DISC, cookie: 2n });
    c.request({ type: NBD_CMD_FLUSH, cookie: 3n });
    await until(() => fx.server.stats().connections[0]?.phase === 'draining');
    release();
    assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 1n });
    await c.read(512);
    assert.equal(await c.closedByServer(), true);
  });

  it('a client that half-closes after its requests still gets the replies', async () => {
    await fx.start([{ node: new MemoryNode({ size: MiB }) }]);
    const c = await connect();
    c.request({ type: NBD_CMD_WRITE, cookie: 1n }, pattern(512, 2));
    c.request({ type: NBD_CMD_FLUSH, cookie: 2n });
    c.socket.end();
    const cookies = [(await c.reply()).cookie, (await c.reply()).cookie].sort();
    assert.deepEqual(cookies, [1n, 2n]);
    assert.equal(await c.closedByServer(), true);
  });

  it('a request header cut short by a dropped client is simply gone', async () => {
    await fx.start([{ node: new MemoryNode({ size: MiB }) }]);
    const c = await connect();
    c.write(encodeRequest({ flags: 0, type: NBD_CMD_READ, cookie: 1n, offset: 0n, length: 512 }).subarray(0, 20));
    c.close();
    await until(() => fx.server.stats().connections.length === 0);
    await connect();
  });
});
