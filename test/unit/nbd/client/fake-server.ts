import net from 'node:net';
import { ByteReader } from '../../../../src/nbd/client/byte-reader.js';
import {
  IHAVEOPT, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_HAS_FLAGS, NBD_FLAG_NO_ZEROES, NBD_FLAG_SEND_FLUSH, NBD_INFO_EXPORT,
  NBD_OPT_GO, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NBD_REP_ERR_UNSUP, NBD_REP_INFO,
  NBD_REP_META_CONTEXT, NBDMAGIC, decodeRequest, encodeChunkHeader, encodeOptionReplyHeader, encodeSimpleReply,
  NBD_CMD_WRITE, type Request,
} from '../../../../src/nbd/protocol.js';

/*
 * A raw-socket NBD server for what real servers cannot be made to do: replies with bogus magic,
 * oversized lengths, unknown chunk types, silence. The handshake is scripted and ordinary unless
 * a test replaces an option's answer; every request goes to the test's handler.
 */

export interface FakeOptions {
  size?: bigint;
  /** Answers an option instead of the ordinary script; return true when handled. */
  option?(option: number, data: Buffer, sock: net.Socket): boolean;
  /** Called for each request of the transmission phase (write payloads already read). */
  request(req: Request, sock: net.Socket, payload: Buffer | undefined): void;
}

export interface Fake {
  readonly path: string;
  close(): Promise<void>;
}

export function optionReply(sock: net.Socket, option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
  sock.write(Buffer.concat([encodeOptionReplyHeader(option, type, data.length), data]));
}

/** A structured chunk; `length` may lie about the payload (hostile servers do). */
export function chunk(sock: net.Socket, cookie: bigint, type: number, flags: number, payload: Buffer, length = payload.length): void {
  sock.write(Buffer.concat([encodeChunkHeader({ flags, type, cookie, length }), payload]));
}

export function simple(sock: net.Socket, cookie: bigint, error: number, data?: Buffer): void {
  sock.write(data ? Buffer.concat([encodeSimpleReply(error, cookie), data]) : encodeSimpleReply(error, cookie));
}

export function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(n);
  return b;
}

export async function fakeServer(path: string, opts: FakeOptions): Promise<Fake> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    void serve(sock, opts).catch(() => sock.destroy());
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    path,
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}

async function serve(sock: net.Socket, opts: FakeOptions): Promise<void> {
  const reader = new ByteReader(sock, () => new Error('client went away'));
  const greeting = Buffer.alloc(18);
  greeting.writeBigUInt64BE(NBDMAGIC, 0);
  greeting.writeBigUInt64BE(IHAVEOPT, 8);
  greeting.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
  sock.write(greeting);
  await reader.read(4);
  for (;;) {
    const h = await reader.read(16);
    const option = h.readUInt32BE(8);
    const data = await reader.read(h.readUInt32BE(12));
    if (opts.option?.(option, data, sock)) continue;
    if (option === NBD_OPT_STRUCTURED_REPLY) optionReply(sock, option, NBD_REP_ACK);
    else if (option === NBD_OPT_SET_META_CONTEXT) {
      const ctx = Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.from('base:allocation')]);
      optionReply(sock, option, NBD_REP_META_CONTEXT, ctx);
      optionReply(sock, option, NBD_REP_ACK);
    } else if (option === NBD_OPT_GO) {
      const info = Buffer.alloc(12);
      info.writeUInt16BE(NBD_INFO_EXPORT, 0);
      info.writeBigUInt64BE(opts.size ?? 1048576n, 2);
      info.writeUInt16BE(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH, 10);
      optionReply(sock, option, NBD_REP_INFO, info);
      optionReply(sock, option, NBD_REP_ACK);
      break;
    } else optionReply(sock, option, NBD_REP_ERR_UNSUP);
  }
  for (;;) {
    const req = decodeRequest(await reader.read(28));
    if (!req) throw new Error('bad request magic');
    const payload = req.type === NBD_CMD_WRITE ? await reader.read(req.length) : undefined;
    opts.request(req, sock, payload);
  }
}
