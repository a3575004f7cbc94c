import { NBD_REQUEST_MAGIC } from '../protocol.js';

/**
 * A transmission request as the server handles it. protocol.ts decodes cookies and offsets as
 * bigint, which costs two BigInt allocations a request and BigInt arithmetic in the range check;
 * the server only echoes the cookie and compares the offset with the export size, so numbers do.
 */
export interface ServerRequest {
  flags: number;
  type: number;
  /** The client's eight-byte cookie as two 32-bit halves, echoed back unchanged. */
  cookieHigh: number;
  cookieLow: number;
  /** The offset; exact up to 2^53, above which it is past the end of any export anyway. */
  offset: number;
  /** The offset's halves, kept so a message can quote a huge offset exactly. */
  offsetHigh: number;
  offsetLow: number;
  length: number;
}

/** The request header at `at` in `b`, or undefined when its magic is wrong. */
export function decodeServerRequest(b: Buffer, at: number): ServerRequest | undefined {
  if (b.readUInt32BE(at) !== NBD_REQUEST_MAGIC) return undefined;
  const offsetHigh = b.readUInt32BE(at + 16);
  const offsetLow = b.readUInt32BE(at + 20);
  return {
    flags: b.readUInt16BE(at + 4),
    type: b.readUInt16BE(at + 6),
    cookieHigh: b.readUInt32BE(at + 8),
    cookieLow: b.readUInt32BE(at + 12),
    offset: offsetHigh * 2 ** 32 + offsetLow,
    offsetHigh,
    offsetLow,
    length: b.readUInt32BE(at + 24),
  };
}

/** The exact offset for messages (the number loses precision above 2^53). */
export function offsetText(r: ServerRequest): string {
  if (Number.isSafeInteger(r.offset)) return String(r.offset);
  return String((BigInt(r.offsetHigh) << 32n) | BigInt(r.offsetLow));
}
