import {
  CLISERV_MAGIC, EXPORT_NAME_PADDING, GREETING_SIZE, IHAVEOPT, NBD_REP_MAGIC, NBDMAGIC, OPTION_HEADER_SIZE,
  OPTION_REPLY_HEADER_SIZE,
} from './constants.js';

/*
 * The framing of fixed-newstyle negotiation (spec §2.2–2.4): the server's greeting, the client's
 * flags, option headers, option reply headers, and the reply to NBD_OPT_EXPORT_NAME. What the
 * options and their replies carry is in option-requests.ts and option-replies.ts.
 */

// ---- greeting (server → client, 18 bytes) --------------------------------------------------

export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(GREETING_SIZE);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/**
 * What the greeting's first 16 bytes say: a newstyle server (its flags follow), an oldstyle one
 * (obsolete, not spoken here), or no NBD server at all. Enough to give up before reading on.
 */
export function greetingStyle(b: Buffer): 'newstyle' | 'oldstyle' | 'not-nbd' | 'bad-newstyle-magic' {
  if (b.readBigUInt64BE(0) !== NBDMAGIC) return 'not-nbd';
  const second = b.readBigUInt64BE(8);
  if (second === CLISERV_MAGIC) return 'oldstyle';
  return second === IHAVEOPT ? 'newstyle' : 'bad-newstyle-magic';
}

/** The handshake flags of a newstyle greeting. */
export function greetingFlags(b: Buffer): number {
  return b.readUInt16BE(16);
}

// ---- client flags (client → server, 4 bytes) -----------------------------------------------

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags, 0);
  return b;
}

export function decodeClientFlags(b: Buffer): number {
  return b.readUInt32BE(0);
}

// ---- options (client → server: 16-byte header, then the data) --------------------------------

export function encodeOptionHeader(option: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(OPTION_HEADER_SIZE);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(length, 12);
  return b;
}

/** An option with its data, in one buffer (one socket write). */
export function encodeOption(option: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(OPTION_HEADER_SIZE + data.length);
  encodeOptionHeader(option, data.length).copy(b, 0);
  b.set(data, OPTION_HEADER_SIZE);
  return b;
}

/** The option header's code and data length, or undefined when its magic is wrong. */
export function decodeOptionHeader(b: Buffer): { option: number; length: number } | undefined {
  if (b.readBigUInt64BE(0) !== IHAVEOPT) return undefined;
  return { option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
}

// ---- option replies (server → client: 20-byte header, then the data) ---------------------------

/** One option reply, header and data in one buffer (one socket write). */
export function encodeOptionReply(option: number, type: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  b.set(data, OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** An error reply carries its message as UTF-8 (the spec's optional error string). */
export function encodeOptionError(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, Buffer.from(message, 'utf8'));
}

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

/** The option reply header, or undefined when its magic is wrong. */
export function decodeOptionReplyHeader(b: Buffer): OptionReplyHeader | undefined {
  if (b.readBigUInt64BE(0) !== NBD_REP_MAGIC) return undefined;
  return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), length: b.readUInt32BE(16) };
}

// ---- the reply to NBD_OPT_EXPORT_NAME (no option reply header) --------------------------------

export function exportNameReplySize(noZeroes: boolean): number {
  return 10 + (noZeroes ? 0 : EXPORT_NAME_PADDING);
}

/** Size and transmission flags, then 124 zero bytes unless NO_ZEROES was agreed. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(exportNameReplySize(noZeroes));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

/** The size stays a bigint: a client must refuse one it cannot address, not round it. */
export function decodeExportNameReply(b: Buffer): { size: bigint; flags: number } {
  return { size: b.readBigUInt64BE(0), flags: b.readUInt16BE(8) };
}
