import {
  encodeChunkHeader, encodeSimpleReply, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE, SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE,
} from '../protocol.js';

/*
 * Transmission replies. Each builder returns whole buffers, header and payload together, so a
 * reply leaves in one socket write; read data is read straight into the buffer that is sent.
 */

/** Longest error message sent to a client (the spec's string limit is 4096; a line is enough). */
const MAX_MESSAGE = 1024;

export function simpleReply(error: number, cookie: bigint): Buffer {
  return encodeSimpleReply(error, cookie);
}

/** A successful simple READ reply: `data` is where the caller reads the bytes. */
export function simpleReadReply(cookie: bigint, length: number): { reply: Buffer; data: Buffer } {
  const reply = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE + length);
  encodeSimpleReply(0, cookie, reply);
  return { reply, data: reply.subarray(SIMPLE_REPLY_SIZE) };
}

function chunk(cookie: bigint, type: number, done: boolean, payloadLength: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + payloadLength);
  encodeChunkHeader({ flags: done ? NBD_REPLY_FLAG_DONE : 0, type, cookie, length: payloadLength }, b);
  return b;
}

/** NBD_REPLY_TYPE_NONE with DONE: success with nothing more to say. */
export function noneChunk(cookie: bigint): Buffer {
  return chunk(cookie, NBD_REPLY_TYPE_NONE, true, 0);
}

/** NBD_REPLY_TYPE_ERROR with DONE: the error and a one-line message. */
export function errorChunk(cookie: bigint, error: number, message: string): Buffer {
  let text = Buffer.from(message);
  if (text.length > MAX_MESSAGE) text = text.subarray(0, MAX_MESSAGE);
  const b = chunk(cookie, NBD_REPLY_TYPE_ERROR, true, 6 + text.length);
  b.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt16BE(text.length, STRUCTURED_REPLY_HEADER_SIZE + 4);
  text.copy(b, STRUCTURED_REPLY_HEADER_SIZE + 6);
  return b;
}

/** An OFFSET_DATA chunk for `length` bytes at `offset`: `data` is where the caller reads them. */
export function offsetDataChunk(cookie: bigint, offset: number, length: number, done: boolean): { reply: Buffer; data: Buffer } {
  const reply = chunk(cookie, NBD_REPLY_TYPE_OFFSET_DATA, done, 8 + length);
  reply.writeBigUInt64BE(BigInt(offset), STRUCTURED_REPLY_HEADER_SIZE);
  return { reply, data: reply.subarray(STRUCTURED_REPLY_HEADER_SIZE + 8) };
}

export function offsetHoleChunk(cookie: bigint, offset: number, length: number, done: boolean): Buffer {
  const b = chunk(cookie, NBD_REPLY_TYPE_OFFSET_HOLE, done, 12);
  b.writeBigUInt64BE(BigInt(offset), STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt32BE(length, STRUCTURED_REPLY_HEADER_SIZE + 8);
  return b;
}

/** One BLOCK_STATUS chunk: the context id, then (length, status) descriptors. */
export function blockStatusChunk(cookie: bigint, contextId: number, extents: readonly { length: number; status: number }[], done: boolean): Buffer {
  const b = chunk(cookie, NBD_REPLY_TYPE_BLOCK_STATUS, done, 4 + 8 * extents.length);
  let at = STRUCTURED_REPLY_HEADER_SIZE;
  b.writeUInt32BE(contextId, at);
  for (const e of extents) {
    b.writeUInt32BE(e.length, at += 4);
    b.writeUInt32BE(e.status, at += 4);
  }
  return b;
}
