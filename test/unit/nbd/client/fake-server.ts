import net from 'node:net';
import { ByteReader } from '../../../../src/nbd/client/byte-reader.js';
import {
  NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_HAS_FLAGS, NBD_FLAG_NO_ZEROES, NBD_FLAG_SEND_FLUSH, NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NBD_REP_ERR_UNSUP, NBD_REP_INFO, NBD_REP_META_CONTEXT,
  decodeOptionHeader, decodeRequestHeader, encodeChunkHeader, encodeGreeting, encodeInfoExport, encodeMetaContextReply,
  encodeOptionReply, encodeSimpleReplyHeader, NBD_CMD_WRITE, REQUEST_HEADER_SIZE, SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE, type Cookie,
} from '../../../../src/nbd/protocol.js';

/*
 * A raw-socket NBD server for what real servers cannot be made to do: replies with bogus magic,
 * oversized lengths, unknown chunk types, silence. The handshake is scripted and ordinary unless
 * a test replaces an option's answer; every request goes to the test's handler.
 */

/** A request as the tests see it: cookie and offset as bigints, for arithmetic on any value. */
export interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
}

export interface FakeOptions {
  size?: number;
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
  sock.write(encodeOptionReply(option, type, data));
}

const halves = (cookie: bigint): Cookie => ({ cookieHigh: Number(cookie >> 32n), cookieLow: Number(cookie & 0xffffffffn) });

/** A structured chunk; `length` may lie about the payload (hostile servers do). */
export function chunk(sock: net.Socket, cookie: bigint, type: number, flags: number, payload: Buffer, length = payload.length): void {
  const header = encodeChunkHeader(Buffer.alloc(STRUCTURED_REPLY_HEADER_SIZE), 0, flags, type, halves(cookie), length);
  sock.write(Buffer.concat([header, payload]));
}

export function simple(sock: net.Socket, cookie: bigint, error: number, data?: Buffer): void {
  const header = encodeSimpleReplyHeader(Buffer.alloc(SIMPLE_REPLY_SIZE), 0, error, halves(cookie));
  sock.write(data ? Buffer.concat([header, data]) : header);
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
  sock.write(encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
  await reader.read(4);
  for (;;) {
    const h = decodeOptionHeader(await reader.read(16));
    if (!h) throw new Error('bad option magic');
    const { option } = h;
    const data = await reader.read(h.length);
    if (opts.option?.(option, data, sock)) continue;
    if (option === NBD_OPT_STRUCTURED_REPLY) optionReply(sock, option, NBD_REP_ACK);
    else if (option === NBD_OPT_SET_META_CONTEXT) {
      optionReply(sock, option, NBD_REP_META_CONTEXT, encodeMetaContextReply(1, 'base:allocation'));
      optionReply(sock, option, NBD_REP_ACK);
    } else if (option === NBD_OPT_GO) {
      optionReply(sock, option, NBD_REP_INFO, encodeInfoExport(opts.size ?? 1048576, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH));
      optionReply(sock, option, NBD_REP_ACK);
      break;
    } else optionReply(sock, option, NBD_REP_ERR_UNSUP);
  }
  for (;;) {
    const h = decodeRequestHeader(await reader.read(REQUEST_HEADER_SIZE), 0);
    if (!h) throw new Error('bad request magic');
    const u64 = (high: number, low: number) => (BigInt(high) << 32n) | BigInt(low);
    const req: Request = { flags: h.flags, type: h.type, cookie: u64(h.cookieHigh, h.cookieLow), offset: u64(h.offsetHigh, h.offsetLow), length: h.length };
    const payload = req.type === NBD_CMD_WRITE ? await reader.read(req.length) : undefined;
    opts.request(req, sock, payload);
  }
}
