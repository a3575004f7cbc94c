import {
  NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE, NBD_SIMPLE_REPLY_MAGIC, NBD_STRUCTURED_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE, STRUCTURED_REPLY_HEADER_SIZE,
} from '../protocol.js';
import { replyPool } from './reply-pool.js';
import type { ServerRequest } from './request.js';

/*
 * Transmission replies. Each builder returns whole buffers, header and payload together, so a
 * reply leaves in one socket write; read data is read straight into the buffer that is sent,
 * which comes from the reply pool. The cookie is copied back as the two halves it arrived in.
 */

/** Longest error message sent to a client (the spec's string limit is 4096; a line is enough). */
const MAX_MESSAGE = 1024;

function simpleHeader(b: Buffer, error: number, r: ServerRequest): void {
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeUInt32BE(r.cookieHigh, 8);
  b.writeUInt32BE(r.cookieLow, 12);
}

export function simpleReply(error: number, r: ServerRequest): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  simpleHeader(b, error, r);
  return b;
}

/** A successful simple READ reply: `data` is where the caller reads the bytes. */
export function simpleReadReply(r: ServerRequest): { reply: Buffer; data: Buffer } {
  const reply = replyPool.acquire(SIMPLE_REPLY_SIZE + r.length, r.length);
  simpleHeader(reply, 0, r);
  return { reply, data: reply.subarray(SIMPLE_REPLY_SIZE) };
}

function chunkHeader(b: Buffer, r: ServerRequest, type: number, done: boolean, payloadLength: number): Buffer {
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(done ? NBD_REPLY_FLAG_DONE : 0, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(r.cookieHigh, 8);
  b.writeUInt32BE(r.cookieLow, 12);
  b.writeUInt32BE(payloadLength, 16);
  return b;
}

function chunk(r: ServerRequest, type: number, done: boolean, payloadLength: number): Buffer {
  return chunkHeader(Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + payloadLength), r, type, done, payloadLength);
}

function writeOffset(b: Buffer, offset: number): void {
  b.writeUInt32BE(Math.floor(offset / 2 ** 32), STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt32BE(offset >>> 0, STRUCTURED_REPLY_HEADER_SIZE + 4);
}

/** NBD_REPLY_TYPE_NONE with DONE: success with nothing more to say. */
export function noneChunk(r: ServerRequest): Buffer {
  return chunk(r, NBD_REPLY_TYPE_NONE, true, 0);
}

/** NBD_REPLY_TYPE_ERROR with DONE: the error and a one-line message. */
export function errorChunk(r: ServerRequest, error: number, message: string): Buffer {
  let text = Buffer.from(message);
  if (text.length > MAX_MESSAGE) text = text.subarray(0, MAX_MESSAGE);
  const b = chunk(r, NBD_REPLY_TYPE_ERROR, true, 6 + text.length);
  b.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt16BE(text.length, STRUCTURED_REPLY_HEADER_SIZE + 4);
  text.copy(b, STRUCTURED_REPLY_HEADER_SIZE + 6);
  return b;
}

/** An OFFSET_DATA chunk for `length` bytes at `offset`: `data` is where the caller reads them. */
export function offsetDataChunk(r: ServerRequest, offset: number, length: number, done: boolean): { reply: Buffer; data: Buffer } {
  const header = STRUCTURED_REPLY_HEADER_SIZE + 8;
  const reply = chunkHeader(replyPool.acquire(header + length, length), r, NBD_REPLY_TYPE_OFFSET_DATA, done, 8 + length);
  writeOffset(reply, offset);
  return { reply, data: reply.subarray(header) };
}

export function offsetHoleChunk(r: ServerRequest, offset: number, length: number, done: boolean): Buffer {
  const b = chunk(r, NBD_REPLY_TYPE_OFFSET_HOLE, done, 12);
  writeOffset(b, offset);
  b.writeUInt32BE(length, STRUCTURED_REPLY_HEADER_SIZE + 8);
  return b;
}

/** One BLOCK_STATUS chunk: the context id, then (length, status) descriptors. */
export function blockStatusChunk(r: ServerRequest, contextId: number, extents: readonly { length: number; status: number }[], done: boolean): Buffer {
  const b = chunk(r, NBD_REPLY_TYPE_BLOCK_STATUS, done, 4 + 8 * extents.length);
  let at = STRUCTURED_REPLY_HEADER_SIZE;
  b.writeUInt32BE(contextId, at);
  for (const e of extents) {
    b.writeUInt32BE(e.length, at += 4);
    b.writeUInt32BE(e.status, at += 4);
  }
  return b;
}
