import {
  NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC, NBD_STRUCTURED_REPLY_MAGIC, SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE,
} from './constants.js';
import { joinU64 } from './u64.js';

/*
 * The transmission phase's fixed headers (spec §3.1–3.3): the request the client sends and the
 * simple reply or structured chunk header the server answers with. These run once per request
 * on both sides, so they write into the caller's buffer at an offset and read into the caller's
 * object: no allocation, no BigInt. 64-bit fields travel as 32-bit halves so that any value the
 * wire can carry round-trips exactly.
 */

/** The eight opaque bytes a client picks for a request and every reply to it echoes. */
export interface Cookie {
  cookieHigh: number;
  cookieLow: number;
}

/** A compact request header (28 bytes). */
export interface RequestHeader extends Cookie {
  flags: number;
  type: number;
  offsetHigh: number;
  offsetLow: number;
  length: number;
}

/** A request as decoded: the header, and its offset as a number (exact below 2^53, past any export's end above). */
export interface Request extends RequestHeader {
  offset: number;
}

export function encodeRequestHeader(b: Buffer, at: number, r: RequestHeader): Buffer {
  b.writeUInt32BE(NBD_REQUEST_MAGIC, at);
  b.writeUInt16BE(r.flags, at + 4);
  b.writeUInt16BE(r.type, at + 6);
  b.writeUInt32BE(r.cookieHigh, at + 8);
  b.writeUInt32BE(r.cookieLow, at + 12);
  b.writeUInt32BE(r.offsetHigh, at + 16);
  b.writeUInt32BE(r.offsetLow, at + 20);
  b.writeUInt32BE(r.length, at + 24);
  return b;
}

/** The request header at `at`, or undefined when its magic is wrong. */
export function decodeRequestHeader(b: Buffer, at: number): Request | undefined {
  if (b.readUInt32BE(at) !== NBD_REQUEST_MAGIC) return undefined;
  const offsetHigh = b.readUInt32BE(at + 16);
  const offsetLow = b.readUInt32BE(at + 20);
  return {
    flags: b.readUInt16BE(at + 4),
    type: b.readUInt16BE(at + 6),
    cookieHigh: b.readUInt32BE(at + 8),
    cookieLow: b.readUInt32BE(at + 12),
    offset: joinU64(offsetHigh, offsetLow),
    offsetHigh,
    offsetLow,
    length: b.readUInt32BE(at + 24),
  };
}

/** A simple reply (16 bytes) or a structured chunk header (20 bytes), as the client reads them. */
export interface ReplyHeader extends Cookie {
  structured: boolean;
  /** Simple replies: the error (0: success). */
  error: number;
  /** Structured chunks: NBD_REPLY_FLAG_*, the chunk type and the payload length. */
  flags: number;
  type: number;
  length: number;
}

export function encodeSimpleReplyHeader(b: Buffer, at: number, error: number, cookie: Cookie): Buffer {
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, at);
  b.writeUInt32BE(error, at + 4);
  b.writeUInt32BE(cookie.cookieHigh, at + 8);
  b.writeUInt32BE(cookie.cookieLow, at + 12);
  return b;
}

export function encodeChunkHeader(b: Buffer, at: number, flags: number, type: number, cookie: Cookie, length: number): Buffer {
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  b.writeUInt32BE(cookie.cookieHigh, at + 8);
  b.writeUInt32BE(cookie.cookieLow, at + 12);
  b.writeUInt32BE(length, at + 16);
  return b;
}

/**
 * The length of the reply header whose magic (4 bytes) is at `at`: 16 for a simple reply, 20 for
 * a structured chunk, 0 when the magic is neither. A client reads the simple reply's 16 bytes
 * first and then, if this says 20, the rest.
 */
export function replyHeaderSize(b: Buffer, at: number): number {
  const magic = b.readUInt32BE(at);
  if (magic === NBD_SIMPLE_REPLY_MAGIC) return SIMPLE_REPLY_SIZE;
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) return STRUCTURED_REPLY_HEADER_SIZE;
  return 0;
}

/** Fills `into` from the header at `at`, whose whole length (replyHeaderSize) must be there. */
export function decodeReplyHeader(b: Buffer, at: number, into: ReplyHeader): ReplyHeader {
  into.structured = b.readUInt32BE(at) === NBD_STRUCTURED_REPLY_MAGIC;
  into.cookieHigh = b.readUInt32BE(at + 8);
  into.cookieLow = b.readUInt32BE(at + 12);
  if (into.structured) {
    into.error = 0;
    into.flags = b.readUInt16BE(at + 4);
    into.type = b.readUInt16BE(at + 6);
    into.length = b.readUInt32BE(at + 16);
  } else {
    into.error = b.readUInt32BE(at + 4);
    into.flags = 0;
    into.type = 0;
    into.length = 0;
  }
  return into;
}

/** A ReplyHeader to decode into, reused for every reply of a connection. */
export function emptyReplyHeader(): ReplyHeader {
  return { structured: false, error: 0, flags: 0, type: 0, cookieHigh: 0, cookieLow: 0, length: 0 };
}
