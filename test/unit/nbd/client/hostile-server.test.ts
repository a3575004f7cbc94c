import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { BlockError } from '../../../../src/core/errors.js';
import { NbdClient, type NbdClientOptions } from '../../../../src/nbd/client/client.js';
import {
  NBD_CMD_BLOCK_STATUS, NBD_INFO_BLOCK_SIZE, NBD_INFO_EXPORT, NBD_OPT_GO, NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK, NBD_REP_INFO, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE,
} from '../../../../src/nbd/protocol.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { chunk, fakeServer, optionReply, simple, u64, type FakeOptions, type Request } from './fake-server.js';
import type net from 'node:net';

/** Only to detect a hang: every case here must end long before. */
const HANG = { timeout: 20_000 };
const DONE = NBD_REPLY_FLAG_DONE;

/** An honest answer to a read: one data chunk of 0xab bytes. */
function honestRead(req: Request, sock: net.Socket): void {
  chunk(sock, req.cookie, NBD_REPLY_TYPE_OFFSET_DATA, DONE, Buffer.concat([u64(req.offset), Buffer.alloc(req.length, 0xab)]));
}

const isCode = (code: string, text?: RegExp) => (e: unknown) =>
  e instanceof BlockError && e.code === code && (!text || text.test(e.message)) && !e.message.includes('\n');

describe('NBD client against a hostile server', () => {
  let tmp: TmpDir;
  let n = 0;
  before(async () => (tmp = await makeTmpDir('vdisk-nbd-fake-')));
  after(async () => tmp.cleanup());

  async function withFake(opts: FakeOptions, fn: (connect: (extra?: Partial<NbdClientOptions>) => Promise<NbdClient>) => Promise<void>): Promise<void> {
    const fake = await fakeServer(tmp.path(`f${++n}.sock`), opts);
    const clients: NbdClient[] = [];
    try {
      await fn(async (extra) => {
        const c = await NbdClient.connect({ server: { type: 'unix', path: fake.path }, ...extra });
        clients.push(c);
        return c;
      });
    } finally {
      await fake.close();
      for (const c of clients) await c.close();
    }
  }

  it('bad reply magic fails every request in flight and the later ones, as a protocol error', HANG, async () => {
    let seen = 0;
    await withFake({
      request: (req, sock) => {
        if (++seen === 2) sock.write(Buffer.alloc(16, 0x42));
      },
    }, async (connect) => {
      const c = await connect();
      const a = c.read(0, new Uint8Array(512));
      const b = c.read(512, new Uint8Array(512));
      await assert.rejects(a, isCode('EIO', /protocol error: bad reply magic/));
      await assert.rejects(b, isCode('EIO', /protocol error/));
      await assert.rejects(c.read(0, new Uint8Array(1)), isCode('EIO', /protocol error/));
    });
  });

  it('lengths beyond the request or the type end the connection without being believed', HANG, async () => {
    const lies: ((req: Request, sock: net.Socket) => void)[] = [
      // 4 GiB of "data" for a 512-byte read.
      (req, sock) => chunk(sock, req.cookie, NBD_REPLY_TYPE_OFFSET_DATA, DONE, u64(req.offset), 0xffffffff),
      // Data placed outside the request.
      (req, sock) => chunk(sock, req.cookie, NBD_REPLY_TYPE_OFFSET_DATA, DONE, Buffer.concat([u64(req.offset + 512n), Buffer.alloc(512)])),
      // A block status chunk of 4 GiB.
      (req, sock) => chunk(sock, req.cookie, NBD_REPLY_TYPE_BLOCK_STATUS, DONE, Buffer.alloc(12), 0xffffffff),
      // An error chunk longer than any message may be.
      (req, sock) => chunk(sock, req.cookie, NBD_REPLY_TYPE_ERROR, DONE, Buffer.alloc(6), 0x7fffffff),
      // A hole of the wrong size.
      (req, sock) => chunk(sock, req.cookie, NBD_REPLY_TYPE_OFFSET_HOLE, DONE, Buffer.alloc(16), 16),
    ];
    for (const [i, lie] of lies.entries()) {
      await withFake({ request: (req, sock) => lie(req, sock) }, async (connect) => {
        const c = await connect();
        const op = i === 2 ? c.blockStatus(0, 4096) : c.read(0, new Uint8Array(512));
        await assert.rejects(op, isCode('EIO', /protocol error/), `lie ${i}`);
      });
    }
  });

  it('a server that stops answering times out every pending request instead of hanging', HANG, async () => {
    await withFake({ request: () => undefined }, async (connect) => {
      const c = await connect({ requestTimeout: 1 });
      const all = [c.read(0, new Uint8Array(512)), c.flush(), c.write(0, new Uint8Array(100))];
      for (const p of all) await assert.rejects(p, isCode('ETIMEDOUT', /no reply within 1 s/));
    });
  });

  it('a silent server during the handshake times out too', HANG, async () => {
    await withFake({ option: () => true, request: () => undefined }, async (connect) => {
      await assert.rejects(connect({ requestTimeout: 1 }), isCode('ETIMEDOUT'));
    });
  });

  it('an unknown error chunk fails its request; the connection goes on', HANG, async () => {
    await withFake({
      request: (req, sock) => {
        if (req.offset === 0n) {
          const msg = Buffer.from('strange failure');
          const body = Buffer.alloc(6);
          body.writeUInt32BE(28, 0);
          body.writeUInt16BE(msg.length, 4);
          chunk(sock, req.cookie, 0x8123, DONE, Buffer.concat([body, msg]));
        } else honestRead(req, sock);
      },
    }, async (connect) => {
      const c = await connect();
      await assert.rejects(c.read(0, new Uint8Array(512)), isCode('ENOSPC', /strange failure/));
      const ok = new Uint8Array(512);
      await c.read(512, ok);
      assert.deepEqual(ok, new Uint8Array(512).fill(0xab));
    });
  });

  it('an unknown non-error chunk type ends the connection', HANG, async () => {
    await withFake({ request: (req, sock) => chunk(sock, req.cookie, 7, DONE, Buffer.alloc(4)) }, async (connect) => {
      const c = await connect();
      await assert.rejects(c.read(0, new Uint8Array(512)), isCode('EIO', /unknown reply chunk type 7/));
    });
  });

  it('replies for cookies never sent, simple replies with read data under structured replies: protocol errors', HANG, async () => {
    for (const lie of [
      (req: Request, sock: net.Socket) => simple(sock, req.cookie + 1000n, 0),
      (req: Request, sock: net.Socket) => simple(sock, req.cookie, 0, Buffer.alloc(req.length)),
    ]) {
      await withFake({ request: lie }, async (connect) => {
        const c = await connect();
        await assert.rejects(c.read(0, new Uint8Array(512)), isCode('EIO', /protocol error/));
      });
    }
  });

  it('a read reply that leaves a gap, or covers a range twice, fails that read only', HANG, async () => {
    let first = true;
    await withFake({
      request: (req, sock) => {
        if (!first) return honestRead(req, sock);
        first = false;
        // Two chunks of 256 overlapping by 128: 512 bytes "covered" with a gap at the end.
        chunk(sock, req.cookie, NBD_REPLY_TYPE_OFFSET_DATA, 0, Buffer.concat([u64(req.offset + 128n), Buffer.alloc(256)]));
        chunk(sock, req.cookie, NBD_REPLY_TYPE_OFFSET_DATA, DONE, Buffer.concat([u64(req.offset), Buffer.alloc(256)]));
      },
    }, async (connect) => {
      const c = await connect();
      await assert.rejects(c.read(0, new Uint8Array(512)), isCode('EIO', /covered 512 of 512 bytes, or some twice/));
      await c.read(0, new Uint8Array(512));
    });
  });

  it('block status with a zero-length extent or an unknown context fails the request only', HANG, async () => {
    const bodies = [
      [1, 0, 0],
      [9, 4096, 0],
    ];
    let i = 0;
    await withFake({
      request: (req, sock) => {
        if (req.type !== NBD_CMD_BLOCK_STATUS) return honestRead(req, sock);
        const words = bodies[i++] ?? [1, 4096, 3];
        const b = Buffer.alloc(4 * words.length);
        words.forEach((w, j) => b.writeUInt32BE(w, 4 * j));
        chunk(sock, req.cookie, NBD_REPLY_TYPE_BLOCK_STATUS, DONE, b);
      },
    }, async (connect) => {
      const c = await connect();
      await assert.rejects(c.blockStatus(0, 4096), isCode('EIO', /length 0/));
      await assert.rejects(c.blockStatus(0, 4096), isCode('EIO', /unknown context 9/));
      assert.deepEqual(await c.blockStatus(0, 4096), new Map([['base:allocation', [{ length: 4096, flags: 3 }]]]));
    });
  });

  it('refuses hostile handshakes: huge option replies, nonsense block sizes, exports past 2^53 bytes', HANG, async () => {
    const cases: [FakeOptions['option'], string, RegExp][] = [
      [(o, _d, sock) => o === NBD_OPT_STRUCTURED_REPLY && (sock.write(Buffer.concat([
        Buffer.from('0003e889045565a9', 'hex'), u32(o), u32(NBD_REP_ACK), u32(0xfffffff0)])), true), 'EIO', /option reply of 4294967280 bytes/],
      [(o, _d, sock) => {
        if (o !== NBD_OPT_GO) return false;
        const bs = Buffer.alloc(14);
        bs.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
        bs.writeUInt32BE(3, 2);
        bs.writeUInt32BE(4096, 6);
        bs.writeUInt32BE(65536, 10);
        optionReply(sock, o, NBD_REP_INFO, bs);
        return true;
      }, 'EIO', /minimum block size of 3/],
      [(o, _d, sock) => {
        if (o !== NBD_OPT_GO) return false;
        const info = Buffer.alloc(12);
        info.writeUInt16BE(NBD_INFO_EXPORT, 0);
        info.writeBigUInt64BE(1n << 60n, 2);
        optionReply(sock, o, NBD_REP_INFO, info);
        optionReply(sock, o, NBD_REP_ACK);
        return true;
      }, 'ERANGE', /larger than vdisk can address/],
    ];
    for (const [option, code, text] of cases) {
      await withFake({ option, request: () => undefined }, async (connect) => {
        await assert.rejects(connect(), isCode(code, text));
      });
    }
  });
});

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}
