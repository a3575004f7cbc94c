import { NBD_MAX_STRING, NBD_REPLY_TYPE_ERROR_OFFSET } from '../protocol.js';

/*
 * Payload decoders for structured reply chunks (specs/nbd.md §3.3). Each takes the payload
 * whose length the header announced and returns the fields, or a string saying why the chunk
 * is malformed. Lengths are checked before anything is read or allocated.
 */

/** The spec's SHOULD-limit on extents in one BLOCK_STATUS chunk; a longer chunk is refused unread. */
export const MAX_STATUS_EXTENTS = 1 << 20;
export const MAX_STATUS_PAYLOAD = 4 + 8 * MAX_STATUS_EXTENTS;
/** Longest error chunk kept: error, message length, a message of up to 4096 bytes, an offset. */
export const MAX_ERROR_PAYLOAD = 6 + NBD_MAX_STRING + 8;

export interface HoleChunk {
  offset: bigint;
  size: number;
}

export function decodeHole(b: Buffer): HoleChunk | string {
  if (b.length !== 12) return `an OFFSET_HOLE chunk of ${b.length} bytes instead of 12`;
  const size = b.readUInt32BE(8);
  if (size === 0) return 'an empty OFFSET_HOLE chunk';
  return { offset: b.readBigUInt64BE(0), size };
}

/** One context's extents: [length0, flags0, length1, flags1, …]. */
export interface StatusChunk {
  contextId: number;
  extents: Uint32Array;
}

export function decodeBlockStatus(b: Buffer): StatusChunk | string {
  if (b.length < 12 || (b.length - 4) % 8 !== 0) return `a BLOCK_STATUS chunk of ${b.length} bytes`;
  const extents = new Uint32Array((b.length - 4) / 4);
  for (let i = 0; i < extents.length; i++) extents[i] = b.readUInt32BE(4 + 4 * i);
  for (let i = 0; i < extents.length; i += 2) if (extents[i] === 0) return 'a BLOCK_STATUS extent of length 0';
  return { contextId: b.readUInt32BE(0), extents };
}

export interface ErrorChunk {
  error: number;
  message: string;
  /** ERROR_OFFSET: where the failure is. */
  offset?: bigint;
}

/** ERROR, ERROR_OFFSET and unknown error types alike: error, message length, message, [offset]. */
export function decodeError(type: number, b: Buffer): ErrorChunk | string {
  if (b.length < 6) return `an error chunk of ${b.length} bytes`;
  const error = b.readUInt32BE(0);
  const msgLength = b.readUInt16BE(4);
  const tail = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
  if (6 + msgLength + tail > b.length) return `an error chunk whose message overruns it (${msgLength} bytes in ${b.length})`;
  if (type === NBD_REPLY_TYPE_ERROR_OFFSET && b.length !== 6 + msgLength + 8) return 'an ERROR_OFFSET chunk of the wrong length';
  const message = b.toString('utf8', 6, 6 + msgLength).replace(/\s+/g, ' ').trim();
  return tail ? { error, message, offset: b.readBigUInt64BE(6 + msgLength) } : { error, message };
}
