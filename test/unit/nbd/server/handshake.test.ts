import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { MemoryNode } from '../../../../src/drivers/protocol/memory/index.js';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_DF, NBD_FLAG_SEND_TRIM, NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, NBD_INFO_NAME,
  NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME, NBD_OPT_EXTENDED_HEADERS, NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT, NBD_OPT_PEEK_EXPORT, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK, NBD_REP_ERR_INVALID, NBD_REP_ERR_POLICY, NBD_REP_ERR_TOO_BIG, NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP,
  NBD_REP_INFO, NBD_REP_META_CONTEXT, NBD_REP_SERVER,
} from '../../../../src/nbd/protocol.js';
import { MAX_OPTIONS } from '../../../../src/nbd/server/handshake.js';
import { exportInfo, infoRequest, metaRequest, RawClient, startServer, type TestServer } from '../../../helpers/nbd-server.js';

/*
 * The handshake as a raw client sees it: every option of specs/nbd.md §2, and the hostile ones
 * (bad magic, unknown options, lengths near 4 GiB, endless options) that must get an error reply
 * or a dropped connection while the server goes on serving others.
 */

const MiB = 1024 * 1024;
let srv: TestServer;
let client: RawClient;

beforeEach(async () => {
  srv = await startServer([
    { node: new MemoryNode({ size: 4 * MiB }), opts: { name: 'disk', description: 'the test disk' } },
    { node: new MemoryNode({ size: MiB }), opts: { name: 'ro', readOnly: true, allocationDepth: true } },
  ]);
  client = await RawClient.connect(srv.socketPath);
});

afterEach(async () => {
  client.close();
  await srv.close();
});

/** The server still serves a new client after whatever the previous one did. */
async function stillServes(): Promise<void> {
  const c = await RawClient.connect(srv.socketPath);
  try {
    const replies = await c.negotiate('disk');
    assert.equal(exportInfo(replies)?.size, BigInt(4 * MiB));
  } finally {
    c.close();
  }
}

describe('greeting and client flags', () => {
  it('offers fixed newstyle and no-zeroes', async () => {
    assert.equal(await client.greet(), NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  });

  it('drops a client that sends unknown client flags', async () => {
    await client.greet(NBD_FLAG_C_FIXED_NEWSTYLE | 0x100);
    assert.equal(await client.closedByServer(), true);
    await stillServes();
  });

  it('drops a client whose option has a bad magic', async () => {
    await client.greet();
    client.write(Buffer.from('NOTMAGIC\0\0\0\x08\0\0\0\0'));
    assert.equal(await client.closedByServer(), true);
    await stillServes();
  });

  it('serves EXPORT_NAME to an old client without fixed newstyle, and drops it for anything else', async () => {
    await client.greet(0);
    client.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
    const reply = await client.read(134);
    assert.equal(reply.readBigUInt64BE(0), BigInt(4 * MiB));
    assert.ok(reply.subarray(10).every((b) => b === 0));
    const other = await RawClient.connect(srv.socketPath);
    await other.greet(0);
    other.sendOption(NBD_OPT_LIST);
    assert.equal(await other.closedByServer(), true);
  });
});

describe('options', () => {
  it('answers unknown and unsupported options with ERR_UNSUP and goes on', async () => {
    await client.greet();
    for (const opt of [NBD_OPT_EXTENDED_HEADERS, NBD_OPT_PEEK_EXPORT, 0x7fff, 0xffffffff]) {
      const [r] = await client.option(opt, Buffer.from('some data the server must skip'));
      assert.equal(r!.type, NBD_REP_ERR_UNSUP);
      assert.equal(r!.option, opt >>> 0);
    }
    assert.equal(exportInfo(await client.option(NBD_OPT_GO, infoRequest('disk')))?.size, BigInt(4 * MiB));
  });

  it('refuses an option length near 4 GiB with ERR_TOO_BIG without waiting for the data', async () => {
    await client.greet();
    client.sendOption(NBD_OPT_GO, Buffer.alloc(0), 0xfffffff0);
    const r = await client.optionReply();
    assert.equal(r.type, NBD_REP_ERR_TOO_BIG);
    assert.equal(await client.closedByServer(), true);
    await stillServes();
  });

  it(`stops a client after ${MAX_OPTIONS} options`, async () => {
    await client.greet();
    for (let i = 0; i < MAX_OPTIONS; i++) assert.equal((await client.option(0x1234))[0]!.type, NBD_REP_ERR_UNSUP);
    client.sendOption(NBD_OPT_LIST);
    assert.equal((await client.optionReply()).type, NBD_REP_ERR_TOO_BIG);
    assert.equal(await client.closedByServer(), true);
  });

  it('LIST names every export with its description', async () => {
    await client.greet();
    const replies = await client.option(NBD_OPT_LIST);
    assert.deepEqual(replies.map((r) => r.type), [NBD_REP_SERVER, NBD_REP_SERVER, NBD_REP_ACK]);
    const names = replies.slice(0, 2).map((r) => {
      const len = r.data.readUInt32BE(0);
      return [r.data.subarray(4, 4 + len).toString(), r.data.subarray(4 + len).toString()];
    });
    assert.deepEqual(names, [['disk', 'the test disk'], ['ro', '']]);
    assert.equal((await client.option(NBD_OPT_LIST, Buffer.from('x')))[0]!.type, NBD_REP_ERR_INVALID);
  });

  it('INFO reports size, flags, block sizes, name and description, and stays in negotiation', async () => {
    await client.greet();
    const replies = await client.option(NBD_OPT_INFO, infoRequest('disk', [NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE]));
    assert.equal(replies[replies.length - 1]!.type, NBD_REP_ACK);
    const info = (t: number) => replies.find((r) => r.type === NBD_REP_INFO && r.data.readUInt16BE(0) === t)?.data;
    assert.equal(info(NBD_INFO_NAME)?.subarray(2).toString(), 'disk');
    assert.equal(info(NBD_INFO_DESCRIPTION)?.subarray(2).toString(), 'the test disk');
    const bs = info(NBD_INFO_BLOCK_SIZE)!;
    assert.deepEqual([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)], [1, 4096, 32 * MiB]);
    const { flags } = exportInfo(replies)!;
    assert.equal(flags & NBD_FLAG_READ_ONLY, 0);
    assert.ok(flags & NBD_FLAG_SEND_TRIM);
    assert.equal(flags & NBD_FLAG_SEND_DF, 0, 'DF needs structured replies');
    assert.ok(flags & NBD_FLAG_CAN_MULTI_CONN, 'connections share the node');
    // Still negotiating: a GO works now.
    assert.equal(exportInfo(await client.option(NBD_OPT_GO, infoRequest('ro')))?.flags! & NBD_FLAG_READ_ONLY, NBD_FLAG_READ_ONLY);
  });

  it('INFO and GO for an unknown export answer ERR_UNKNOWN; malformed data ERR_INVALID', async () => {
    await client.greet();
    assert.equal((await client.option(NBD_OPT_INFO, infoRequest('nope')))[0]!.type, NBD_REP_ERR_UNKNOWN);
    assert.equal((await client.option(NBD_OPT_GO, infoRequest('nope')))[0]!.type, NBD_REP_ERR_UNKNOWN);
    const truncated = infoRequest('disk', [1, 2]).subarray(0, 11);
    assert.equal((await client.option(NBD_OPT_GO, truncated))[0]!.type, NBD_REP_ERR_INVALID);
    const lying = Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0]);
    assert.equal((await client.option(NBD_OPT_GO, lying))[0]!.type, NBD_REP_ERR_INVALID);
    assert.ok(exportInfo(await client.option(NBD_OPT_GO, infoRequest('disk'))));
  });

  it('EXPORT_NAME of an unknown export drops the client (it has no error reply)', async () => {
    await client.greet();
    client.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('nope'));
    assert.equal(await client.closedByServer(), true);
  });

  it('ABORT is acknowledged and the connection closes', async () => {
    await client.greet();
    assert.equal((await client.option(NBD_OPT_ABORT))[0]!.type, NBD_REP_ACK);
    assert.equal(await client.closedByServer(), true);
  });

  it('STARTTLS without credentials is ERR_POLICY', async () => {
    await client.greet();
    assert.equal((await client.option(NBD_OPT_STARTTLS))[0]!.type, NBD_REP_ERR_POLICY);
  });

  it('STRUCTURED_REPLY is acknowledged once; with data or a second time it is ERR_INVALID', async () => {
    await client.greet();
    assert.equal((await client.option(NBD_OPT_STRUCTURED_REPLY, Buffer.from('x')))[0]!.type, NBD_REP_ERR_INVALID);
    assert.equal((await client.option(NBD_OPT_STRUCTURED_REPLY))[0]!.type, NBD_REP_ACK);
    assert.equal((await client.option(NBD_OPT_STRUCTURED_REPLY))[0]!.type, NBD_REP_ERR_INVALID);
    const replies = await client.option(NBD_OPT_GO, infoRequest('disk'));
    assert.ok(exportInfo(replies)!.flags & NBD_FLAG_SEND_DF);
  });
});

describe('metadata contexts', () => {
  const contexts = (replies: { type: number; data: Buffer }[]) =>
    replies.filter((r) => r.type === NBD_REP_META_CONTEXT).map((r) => [r.data.readUInt32BE(0), r.data.subarray(4).toString()]);

  it('need structured replies first', async () => {
    await client.greet();
    assert.equal((await client.option(NBD_OPT_SET_META_CONTEXT, metaRequest('disk', ['base:allocation'])))[0]!.type, NBD_REP_ERR_INVALID);
  });

  it('LIST shows what an export offers; namespaces and no queries list everything', async () => {
    await client.greet();
    await client.option(NBD_OPT_STRUCTURED_REPLY);
    assert.deepEqual(contexts(await client.option(NBD_OPT_LIST_META_CONTEXT, metaRequest('disk', []))), [[0, 'base:allocation']]);
    assert.deepEqual(contexts(await client.option(NBD_OPT_LIST_META_CONTEXT, metaRequest('ro', []))),
      [[0, 'base:allocation'], [0, 'qemu:allocation-depth']]);
    assert.deepEqual(contexts(await client.option(NBD_OPT_LIST_META_CONTEXT, metaRequest('ro', ['qemu:', 'x-nope:y']))),
      [[0, 'qemu:allocation-depth']]);
    assert.equal((await client.option(NBD_OPT_LIST_META_CONTEXT, metaRequest('nope', [])))[0]!.type, NBD_REP_ERR_UNKNOWN);
  });

  it('SET selects exact names with distinct ids; unknown names and bare namespaces select nothing', async () => {
    await client.greet();
    await client.option(NBD_OPT_STRUCTURED_REPLY);
    const set = contexts(await client.option(NBD_OPT_SET_META_CONTEXT, metaRequest('ro', ['base:allocation', 'qemu:allocation-depth', 'base:', 'qemu:nope'])));
    assert.deepEqual(set.map((c) => c[1]), ['base:allocation', 'qemu:allocation-depth']);
    assert.notEqual(set[0]![0], set[1]![0]);
    assert.deepEqual(contexts(await client.option(NBD_OPT_SET_META_CONTEXT, metaRequest('disk', ['qemu:allocation-depth']))), []);
  });

  it('malformed queries are ERR_INVALID', async () => {
    await client.greet();
    await client.option(NBD_OPT_STRUCTURED_REPLY);
    const req = metaRequest('disk', ['base:allocation']);
    assert.equal((await client.option(NBD_OPT_SET_META_CONTEXT, req.subarray(0, req.length - 3)))[0]!.type, NBD_REP_ERR_INVALID);
    const many = Buffer.from(req);
    many.writeUInt32BE(0x7fffffff, 8);
    assert.equal((await client.option(NBD_OPT_LIST_META_CONTEXT, many))[0]!.type, NBD_REP_ERR_INVALID);
    assert.equal((await client.option(NBD_OPT_SET_META_CONTEXT, Buffer.concat([req, Buffer.from('junk')])))[0]!.type, NBD_REP_ERR_INVALID);
  });
});

it('a client that connects and sends nothing is dropped after the handshake limit', async () => {
  const quick = await startServer([{ node: new MemoryNode({ size: MiB }) }], { limits: { handshakeTimeout: 50 } });
  const idle = await RawClient.connect(quick.socketPath);
  try {
    await idle.read(18);
    assert.equal(await idle.closedByServer(), true);
  } finally {
    idle.close();
    await quick.close();
  }
});
