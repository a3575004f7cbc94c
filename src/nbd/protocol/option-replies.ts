import { NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, NBD_INFO_EXPORT, NBD_INFO_NAME } from './constants.js';

/*
 * The data of the server's option replies (spec §2.5–2.7): NBD_REP_SERVER, NBD_REP_META_CONTEXT
 * and the NBD_REP_INFO bodies. The server encodes, the client decodes (into the fields, or a
 * string saying why the reply is malformed). handshake.ts frames them with the reply header.
 */

// ---- NBD_REP_SERVER (LIST) -------------------------------------------------------------------

/** u32 name length, name, then the human-readable details (here the export's description). */
export function encodeServerReply(name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const details = Buffer.from(description, 'utf8');
  const b = Buffer.alloc(4 + nameBytes.length + details.length);
  b.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(b, 4);
  details.copy(b, 4 + nameBytes.length);
  return b;
}

export function decodeServerReply(b: Buffer): { name: string; description: string } | string {
  if (b.length < 4) return `an NBD_REP_SERVER reply of ${b.length} bytes`;
  const length = b.readUInt32BE(0);
  if (length > b.length - 4) return `an NBD_REP_SERVER name of ${length} bytes in ${b.length}`;
  return { name: b.toString('utf8', 4, 4 + length), description: b.toString('utf8', 4 + length) };
}

// ---- NBD_REP_META_CONTEXT --------------------------------------------------------------------

/** u32 context id, then the context name (no NUL). */
export function encodeMetaContextReply(id: number, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + nameBytes.length);
  b.writeUInt32BE(id, 0);
  nameBytes.copy(b, 4);
  return b;
}

export function decodeMetaContextReply(b: Buffer): { id: number; name: string } | string {
  if (b.length < 5) return 'malformed NBD_REP_META_CONTEXT reply';
  return { id: b.readUInt32BE(0), name: b.toString('utf8', 4) };
}

// ---- NBD_REP_INFO ----------------------------------------------------------------------------

export interface BlockSizeInfo {
  minimum: number;
  preferred: number;
  maximum: number;
}

export type InfoReply =
  | { type: typeof NBD_INFO_EXPORT; size: bigint; flags: number }
  | { type: typeof NBD_INFO_BLOCK_SIZE; sizes: BlockSizeInfo }
  | { type: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION; text: string }
  | { type: 'unknown' };

/** NBD_INFO_EXPORT: u16 type, u64 size, u16 transmission flags. */
export function encodeInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

/** NBD_INFO_NAME and NBD_INFO_DESCRIPTION: u16 type, then the text. */
export function encodeInfoString(type: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION, text: string): Buffer {
  const textBytes = Buffer.from(text, 'utf8');
  const b = Buffer.alloc(2 + textBytes.length);
  b.writeUInt16BE(type, 0);
  textBytes.copy(b, 2);
  return b;
}

/** NBD_INFO_BLOCK_SIZE: u16 type, u32 minimum, u32 preferred, u32 maximum payload. */
export function encodeInfoBlockSize(sizes: BlockSizeInfo): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(sizes.minimum, 2);
  b.writeUInt32BE(sizes.preferred, 6);
  b.writeUInt32BE(sizes.maximum, 10);
  return b;
}

function isPowerOfTwo32(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** One NBD_REP_INFO body, or a string saying why it is malformed. */
export function decodeInfoReply(b: Buffer): InfoReply | string {
  if (b.length < 2) return 'an NBD_REP_INFO reply shorter than its type';
  const type = b.readUInt16BE(0);
  switch (type) {
    case NBD_INFO_EXPORT:
      if (b.length !== 12) return `NBD_INFO_EXPORT of ${b.length} bytes instead of 12`;
      return { type, size: b.readBigUInt64BE(2), flags: b.readUInt16BE(10) };
    case NBD_INFO_BLOCK_SIZE: {
      if (b.length !== 14) return `NBD_INFO_BLOCK_SIZE of ${b.length} bytes instead of 14`;
      const sizes = { minimum: b.readUInt32BE(2), preferred: b.readUInt32BE(6), maximum: b.readUInt32BE(10) };
      // The spec's own bounds; a client that requested the sizes must obey them, so nonsense is fatal.
      if (!isPowerOfTwo32(sizes.minimum) || sizes.minimum > 65536) return `a minimum block size of ${sizes.minimum}`;
      if (!isPowerOfTwo32(sizes.preferred) || sizes.preferred < sizes.minimum) return `a preferred block size of ${sizes.preferred}`;
      if (sizes.maximum < sizes.minimum || (sizes.maximum !== 0xffffffff && sizes.maximum % sizes.minimum !== 0)) {
        return `a maximum payload of ${sizes.maximum}`;
      }
      return { type, sizes };
    }
    case NBD_INFO_NAME:
    case NBD_INFO_DESCRIPTION:
      return { type, text: b.toString('utf8', 2) };
    default:
      // Unknown information is ignored, as the spec asks of clients.
      return { type: 'unknown' };
  }
}
