import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeReplyHeader, decodeRequestHeader, emptyReplyHeader, encodeChunkHeader, encodeRequestHeader,
  encodeSimpleReplyHeader, replyHeaderSize, REQUEST_HEADER_SIZE, SIMPLE_REPLY_SIZE, STRUCTURED_REPLY_HEADER_SIZE,
} from '../../../../src/nbd/protocol.js';

// Layouts from specs/nbd.md §8 (the byte-layout cheat sheet) and doc/proto.md.

test('a request is magic, flags, type, cookie, offset, length: 28 bytes', () => {
  const r = { flags: 0x0001, type: 0x0007, cookieHigh: 0x01234567, cookieLow: 0x89abcdef, offsetHigh: 1, offsetLow: 0x1000, length: 4096 };
  const b = encodeRequestHeader(Buffer.alloc(REQUEST_HEADER_SIZE), 0, r);
  assert.equal(b.toString('hex'), '25609513' + '0001' + '0007' + '0123456789abcdef' + '0000000100001000' + '00001000');
  assert.deepEqual(decodeRequestHeader(b, 0), { ...r, offset: 2 ** 32 + 0x1000 });
});

test('a request round-trips at any position of a buffer, with 64-bit fields past 2^53 exact', () => {
  const r = { flags: 0xffff, type: 0xffff, cookieHigh: 0xffffffff, cookieLow: 0xfffffffe, offsetHigh: 0xffffffff, offsetLow: 0xffffffff, length: 0xffffffff };
  const b = Buffer.alloc(40);
  encodeRequestHeader(b, 7, r);
  const back = decodeRequestHeader(b, 7)!;
  assert.deepEqual({ ...back, offset: undefined }, { ...r, offset: undefined });
  // Past 2^53 the number is past the end of any export, which is all the server asks of it.
  assert.ok(back.offset > Number.MAX_SAFE_INTEGER);
});

test('a request with a bad magic is refused', () => {
  const b = encodeRequestHeader(Buffer.alloc(REQUEST_HEADER_SIZE), 0,
    { flags: 0, type: 0, cookieHigh: 0, cookieLow: 1, offsetHigh: 0, offsetLow: 0, length: 1 });
  b[0] ^= 1;
  assert.equal(decodeRequestHeader(b, 0), undefined);
});

test('a simple reply is magic, error, cookie: 16 bytes', () => {
  const b = encodeSimpleReplyHeader(Buffer.alloc(SIMPLE_REPLY_SIZE), 0, 22, { cookieHigh: 0, cookieLow: 1 });
  assert.equal(b.toString('hex'), '67446698' + '00000016' + '0000000000000001');
  assert.equal(replyHeaderSize(b, 0), 16);
  assert.deepEqual(decodeReplyHeader(b, 0, emptyReplyHeader()),
    { structured: false, error: 22, flags: 0, type: 0, cookieHigh: 0, cookieLow: 1, length: 0 });
});

test('a structured chunk header is magic, flags, type, cookie, length: 20 bytes', () => {
  const b = encodeChunkHeader(Buffer.alloc(STRUCTURED_REPLY_HEADER_SIZE), 0, 1, 2, { cookieHigh: 0xdeadbeef, cookieLow: 3 }, 12);
  assert.equal(b.toString('hex'), '668e33ef' + '0001' + '0002' + 'deadbeef00000003' + '0000000c');
  assert.equal(replyHeaderSize(b, 0), 20);
  assert.deepEqual(decodeReplyHeader(b, 0, emptyReplyHeader()),
    { structured: true, error: 0, flags: 1, type: 2, cookieHigh: 0xdeadbeef, cookieLow: 3, length: 12 });
});

test('one header object decodes reply after reply; an unknown magic has no header size', () => {
  const into = emptyReplyHeader();
  const chunk = encodeChunkHeader(Buffer.alloc(20), 0, 1, 5, { cookieHigh: 0, cookieLow: 9 }, 100);
  const simple = encodeSimpleReplyHeader(Buffer.alloc(16), 0, 0, { cookieHigh: 0, cookieLow: 10 });
  assert.equal(decodeReplyHeader(chunk, 0, into), into);
  decodeReplyHeader(simple, 0, into);
  assert.deepEqual(into, { structured: false, error: 0, flags: 0, type: 0, cookieHigh: 0, cookieLow: 10, length: 0 });
  // The extended-header reply magic is not spoken here: a client must treat it as garbage.
  assert.equal(replyHeaderSize(Buffer.from('6e8a278c', 'hex'), 0), 0);
  assert.equal(replyHeaderSize(Buffer.alloc(4), 0), 0);
});
