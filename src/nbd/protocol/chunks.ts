import { MAX_STATUS_EXTENTS, NBD_MAX_STRING, NBD_REPLY_TYPE_ERROR_OFFSET } from './constants.js';
import { readU64, writeU64 } from './u64.js';

/*
 * Payloads of structured reply chunks (spec §3.3). The server writes them after the chunk header
 * in the buffer it sends (encoders take the buffer and the payload's position). The client
 * decodes the payload whose length the header announced and gets the fields, or a string saying
 * why the chunk is malformed; lengths are checked before anything is read or allocated.
 */

/** OFFSET_DATA: the u64 offset that precedes the data. */
export const OFFSET_DATA_PREFIX = 8;
export const OFFSET_HOLE_PAYLOAD = 12;
/** Longest BLOCK_STATUS payload a client accepts: the spec's extent limit. */
export const MAX_STATUS_PAYLOAD = 4 + 8 * MAX_STATUS_EXTENTS;
/** Longest error payload a client accepts: error, message length, a message of up to 4096 bytes, an offset. */
export const MAX_ERROR_PAYLOAD = 6 + NBD_MAX_STRING + 8;

// ---- OFFSET_DATA ---------------------------------------------------------------------------

/** Writes the offset of an OFFSET_DATA chunk; its data goes at `at + OFFSET_DATA_PREFIX`. */
export function encodeOffsetData(b: Buffer, at: number, offset: number): void {
  writeU64(b, at, offset);
}

/** The offset of an OFFSET_DATA chunk (the first OFFSET_DATA_PREFIX bytes of its payload). */
export function decodeOffsetData(b: Buffer, at: number): number {
  return readU64(b, at);
}

// ---- OFFSET_HOLE ---------------------------------------------------------------------------

export interface HoleChunk {
  offset: number;
  size: number;
}

export function encodeHole(b: Buffer, at: number, offset: number, size: number): void {
  writeU64(b, at, offset);
  b.writeUInt32BE(size, at + 8);
}

export function decodeHole(b: Buffer): HoleChunk | string {
  if (b.length !== OFFSET_HOLE_PAYLOAD) return `an OFFSET_HOLE chunk of ${b.length} bytes instead of ${OFFSET_HOLE_PAYLOAD}`;
  const size = b.readUInt32BE(8);
  if (size === 0) return 'an empty OFFSET_HOLE chunk';
  return { offset: readU64(b, 0), size };
}

// ---- BLOCK_STATUS --------------------------------------------------------------------------

/** One descriptor as the server builds it. */
export interface StatusDescriptor {
  length: number;
  status: number;
}

/** One context's extents as the client receives them: [length0, flags0, length1, flags1, …]. */
export interface StatusChunk {
  contextId: number;
  extents: Uint32Array;
}

export function blockStatusPayloadSize(descriptors: number): number {
  return 4 + 8 * descriptors;
}

export function encodeBlockStatus(b: Buffer, at: number, contextId: number, descriptors: readonly StatusDescriptor[]): void {
  b.writeUInt32BE(contextId, at);
  for (const d of descriptors) {
    b.writeUInt32BE(d.length, at += 4);
    b.writeUInt32BE(d.status, at += 4);
  }
}

export function decodeBlockStatus(b: Buffer): StatusChunk | string {
  if (b.length < 12 || (b.length - 4) % 8 !== 0) return `a BLOCK_STATUS chunk of ${b.length} bytes`;
  const extents = new Uint32Array((b.length - 4) / 4);
  for (let i = 0; i < extents.length; i++) extents[i] = b.readUInt32BE(4 + 4 * i);
  for (let i = 0; i < extents.length; i += 2) if (extents[i] === 0) return 'a BLOCK_STATUS extent of length 0';
  return { contextId: b.readUInt32BE(0), extents };
}

// ---- ERROR, ERROR_OFFSET -------------------------------------------------------------------

export interface ErrorChunk {
  error: number;
  message: string;
  /** ERROR_OFFSET: where the failure is. */
  offset?: number;
}

/** The payload length of an error chunk with a message of `messageBytes` (and an offset for ERROR_OFFSET). */
export function errorPayloadSize(messageBytes: number, withOffset = false): number {
  return 6 + messageBytes + (withOffset ? 8 : 0);
}

/** error, message length, message (UTF-8, at most 65535 bytes), then the offset for ERROR_OFFSET. */
export function encodeError(b: Buffer, at: number, error: number, message: Uint8Array, offset?: number): void {
  b.writeUInt32BE(error, at);
  b.writeUInt16BE(message.length, at + 4);
  b.set(message, at + 6);
  if (offset !== undefined) writeU64(b, at + 6 + message.length, offset);
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
  return tail ? { error, message, offset: readU64(b, 6 + msgLength) } : { error, message };
}
