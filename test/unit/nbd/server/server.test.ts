import assert from 'node:assert/strict';
import { once } from 'node:events';
import { lstat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { it } from 'node:test';
import { MemoryNode } from '../../../../src/drivers/protocol/memory/index.js';
import { BlockError } from '../../../../src/core/errors.js';
import {
  NBD_CMD_READ, NBD_CMD_WRITE, NBD_FLAG_CAN_MULTI_CONN, NBD_OPT_GO, NBD_OPT_INFO,
} from '../../../../src/nbd/protocol.js';
import { NbdExport, NbdServer } from '../../../../src/nbd/server/index.js';
import { pattern } from '../../../helpers/bytes.js';
import { exportInfo, infoRequest, RawClient, ServerFixture } from '../../../helpers/nbd-server.js';
import { RecordingNode } from '../../../helpers/test-nodes.js';
import { makeTmpDir } from '../../../helpers/tmp.js';
import { run } from '../../../helpers/oracles.js';

/* The server around the connections: sharing one node, client limits, listening, graceful stop. */

const MiB = 1024 * 1024;
const fx = new ServerFixture();
const client = () => fx.client();

it('connections to one export share its node: a write on one is read on another', async () => {
  await fx.start([{ node: new MemoryNode({ size: MiB }) }]);
  const [a, b] = [await client(), await client()];
  await a.negotiate('', { structured: false });
  await b.negotiate('', { structured: false });
  a.request({ type: NBD_CMD_WRITE, offset: 4096n }, pattern(512, 1));
  assert.equal((await a.reply()).simple, true);
  b.request({ type: NBD_CMD_READ, offset: 4096n, length: 512 });
  await b.reply();
  assert.deepEqual(new Uint8Array(await b.read(512)), pattern(512, 1));
});

it('with one client allowed, the next waits its turn and multi-conn is not advertised', async () => {
  await fx.start([{ node: new MemoryNode({ size: MiB }) }], { maxClients: 1 });
  const first = await client();
  await first.greet();
  const info = exportInfo(await first.option(NBD_OPT_INFO, infoRequest('')));
  assert.equal(info!.flags & NBD_FLAG_CAN_MULTI_CONN, 0);
  const second = await client();
  let greeted = false;
  const greeting = second.read(18).then(() => (greeted = true));
  while (fx.server.stats().waiting === 0) await new Promise((r) => setImmediate(r));
  assert.equal(greeted, false);
  first.close();
  await greeting;
  assert.equal(fx.server.stats().waiting, 0);
});

it("emits 'idle' when the last client has gone", async () => {
  await fx.start([{ node: new MemoryNode({ size: MiB }) }]);
  const idle = once(fx.server, 'idle');
  const a = await client();
  await a.negotiate();
  a.close();
  await idle;
  assert.equal(fx.server.stats().connections.length, 0);
});

it('close() answers the requests in flight, closes the clients, then flushes the export', async () => {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const node = new RecordingNode({ size: MiB, delay: () => gate });
  await fx.start([{ node }]);
  const c = await client();
  await c.negotiate('', { structured: false });
  c.request({ type: NBD_CMD_WRITE, cookie: 4n, offset: 0n }, pattern(512, 2));
  while (node.callsOf('write').length === 0) await new Promise((r) => setImmediate(r));
  const closing = fx.server.close();
  // New clients are refused while the old ones finish.
  await assert.rejects(RawClient.connect(fx.socketPath).then((x) => x.read(18)));
  release();
  assert.deepEqual(await c.reply(), { simple: true, error: 0, cookie: 4n });
  assert.equal(await c.closedByServer(), true);
  await closing;
  assert.deepEqual(node.calls.slice(-1).map((x) => x.hook), ['flush']);
});

it('refuses duplicate export names, no exports, and a busy address with one-line errors', async () => {
  const node = new MemoryNode({ size: MiB });
  assert.throws(() => new NbdServer({ exports: [] }), BlockError);
  assert.throws(() => new NbdServer({ exports: [new NbdExport(node, { name: 'a' }), new NbdExport(node, { name: 'a' })] }), /Two exports are named 'a'/);
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  const { port } = blocker.address() as net.AddressInfo;
  const server = new NbdServer({ exports: [new NbdExport(node)] });
  try {
    await assert.rejects(server.listen({ port, host: '127.0.0.1' }), (e: BlockError) => e.code === 'EBUSY' && /Cannot listen on 127.0.0.1:/.test(e.message));
  } finally {
    blocker.close();
    await server.close();
  }
});

it('replaces a stale Unix socket but never a regular file', async () => {
  const tmp = await makeTmpDir();
  const node = new MemoryNode({ size: MiB });
  try {
    const path = tmp.path('s.sock');
    // A server killed outright leaves its socket file behind.
    const script = `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`;
    await run(process.execPath, ['-e', script]);
    assert.ok((await lstat(path)).isSocket());
    const server = new NbdServer({ exports: [new NbdExport(node)] });
    await server.listen({ path });
    const c = await RawClient.connect(path);
    await c.greet();
    assert.equal((await c.option(NBD_OPT_GO, infoRequest('')))[0]!.type, 3);
    c.close();
    await server.close();
    const file = tmp.path('plain');
    await writeFile(file, 'keep me');
    await assert.rejects(new NbdServer({ exports: [new NbdExport(node)] }).listen({ path: file }), BlockError);
  } finally {
    await tmp.cleanup();
  }
});
