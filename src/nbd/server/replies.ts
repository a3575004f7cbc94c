import {
  blockStatusPayloadSize, encodeBlockStatus, encodeChunkHeader, encodeError, encodeHole, encodeOffsetData,
  encodeSimpleReplyHeader, errorPayloadSize, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE, OFFSET_DATA_PREFIX, OFFSET_HOLE_PAYLOAD,
  SIMPLE_REPLY_SIZE, STRUCTURED_REPLY_HEADER_SIZE, type Request, type StatusDescriptor,
} from '../protocol.js';
import { replyPool } from './reply-pool.js';

/*
 * Transmission replies. Each builder returns whole buffers, header and payload together, so a
 * reply leaves in one socket write; read data is read straight into the buffer that is sent,
 * which comes from the reply pool. The cookie is copied back as the two halves it arrived in.
 */

/** Longest error message sent to a client (the spec's string limit is 4096; a line is enough). */
const MAX_MESSAGE = 1024;
const PAYLOAD = STRUCTURED_REPLY_HEADER_SIZE;

export function simpleReply(error: number, r: Request): Buffer {
  return encodeSimpleReplyHeader(Buffer.allocUnsafe(SIMPLE_REPLY_SIZE), 0, error, r);
}

/** A successful simple READ reply: `data` is where the caller reads the bytes. */
export function simpleReadReply(r: Request): { reply: Buffer; data: Buffer } {
  const reply = encodeSimpleReplyHeader(replyPool.acquire(SIMPLE_REPLY_SIZE + r.length, r.length), 0, 0, r);
  return { reply, data: reply.subarray(SIMPLE_REPLY_SIZE) };
}

function chunk(r: Request, type: number, done: boolean, payloadLength: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + payloadLength);
  return encodeChunkHeader(b, 0, done ? NBD_REPLY_FLAG_DONE : 0, type, r, payloadLength);
}

/** NBD_REPLY_TYPE_NONE with DONE: success with nothing more to say. */
export function noneChunk(r: Request): Buffer {
  return chunk(r, NBD_REPLY_TYPE_NONE, true, 0);
}

/** NBD_REPLY_TYPE_ERROR with DONE: the error and a one-line message. */
export function errorChunk(r: Request, error: number, message: string): Buffer {
  let text = Buffer.from(message);
  if (text.length > MAX_MESSAGE) text = text.subarray(0, MAX_MESSAGE);
  const b = chunk(r, NBD_REPLY_TYPE_ERROR, true, errorPayloadSize(text.length));
  encodeError(b, PAYLOAD, error, text);
  return b;
}

/** An OFFSET_DATA chunk for `length` bytes at `offset`: `data` is where the caller reads them. */
export function offsetDataChunk(r: Request, offset: number, length: number, done: boolean): { reply: Buffer; data: Buffer } {
  const header = PAYLOAD + OFFSET_DATA_PREFIX;
  const reply = replyPool.acquire(header + length, length);
  encodeChunkHeader(reply, 0, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_DATA, r, OFFSET_DATA_PREFIX + length);
  encodeOffsetData(reply, PAYLOAD, offset);
  return { reply, data: reply.subarray(header) };
}

export function offsetHoleChunk(r: Request, offset: number, length: number, done: boolean): Buffer {
  const b = chunk(r, NBD_REPLY_TYPE_OFFSET_HOLE, done, OFFSET_HOLE_PAYLOAD);
  encodeHole(b, PAYLOAD, offset, length);
  return b;
}

/** One BLOCK_STATUS chunk: the context id, then (length, status) descriptors. */
export function blockStatusChunk(r: Request, contextId: number, descriptors: readonly StatusDescriptor[], done: boolean): Buffer {
  const b = chunk(r, NBD_REPLY_TYPE_BLOCK_STATUS, done, blockStatusPayloadSize(descriptors.length));
  encodeBlockStatus(b, PAYLOAD, contextId, descriptors);
  return b;
}
