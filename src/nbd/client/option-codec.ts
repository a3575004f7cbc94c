import {
  NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_MAX_STRING,
} from '../protocol.js';

/*
 * Client-side option payloads (the server has its own decoders): what the client sends in
 * GO/INFO and SET_META_CONTEXT, and the NBD_REP_INFO bodies it reads back.
 */

function stringBytes(s: string, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > NBD_MAX_STRING) throw new RangeError(`${what} is longer than ${NBD_MAX_STRING} bytes`);
  return b;
}

/** NBD_OPT_GO / NBD_OPT_INFO: u32 name length, name, u16 count, count × u16 info type. */
export function encodeGoPayload(exportName: string, infos: readonly number[]): Buffer {
  const name = stringBytes(exportName, 'The export name');
  const b = Buffer.alloc(4 + name.length + 2 + 2 * infos.length);
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + name.length);
  infos.forEach((info, i) => b.writeUInt16BE(info, 6 + name.length + 2 * i));
  return b;
}

/** NBD_OPT_SET/LIST_META_CONTEXT: u32 name length, name, u32 count, count × (u32 length, query). */
export function encodeMetaContextPayload(exportName: string, queries: readonly string[]): Buffer {
  const parts = [stringBytes(exportName, 'The export name'), ...queries.map((q) => stringBytes(q, 'A meta context query'))];
  const b = Buffer.alloc(4 + parts.reduce((n, p) => n + 4 + p.length, 0));
  let at = 0;
  const put = (p: Buffer): void => {
    b.writeUInt32BE(p.length, at);
    p.copy(b, at + 4);
    at += 4 + p.length;
  };
  put(parts[0]!);
  b.writeUInt32BE(queries.length, at);
  at += 4;
  for (const q of parts.slice(1)) put(q);
  return b;
}

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
