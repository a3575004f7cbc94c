import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  blockStatusPayloadSize, decodeBlockStatus, decodeError, decodeHole, decodeOffsetData, encodeBlockStatus, encodeError,
  encodeHole, encodeOffsetData, errorPayloadSize, MAX_ERROR_PAYLOAD, MAX_STATUS_PAYLOAD, NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET, OFFSET_DATA_PREFIX, OFFSET_HOLE_PAYLOAD,
} from '../../../../src/nbd/protocol.js';

// Payload layouts from specs/nbd.md §3.3 and §8.

test('OFFSET_DATA: the u64 offset, then the data', () => {
  const b = Buffer.alloc(OFFSET_DATA_PREFIX + 2, 0xee);
  encodeOffsetData(b, 0, 2 ** 40 + 512);
  assert.equal(b.toString('hex'), '0000010000000200' + 'eeee');
  assert.equal(decodeOffsetData(b, 0), 2 ** 40 + 512);
});

test('OFFSET_HOLE: u64 offset, u32 size; empty or mis-sized holes are malformed', () => {
  const b = Buffer.alloc(OFFSET_HOLE_PAYLOAD);
  encodeHole(b, 0, 4096, 65536);
  assert.equal(b.toString('hex'), '0000000000001000' + '00010000');
  assert.deepEqual(decodeHole(b), { offset: 4096, size: 65536 });
  assert.match(decodeHole(Buffer.alloc(12)) as string, /empty OFFSET_HOLE/);
  assert.match(decodeHole(Buffer.alloc(16)) as string, /16 bytes instead of 12/);
});

test('BLOCK_STATUS: u32 context id, then (u32 length, u32 flags) per extent', () => {
  const descriptors = [{ length: 65536, status: 0 }, { length: 0xfffff000, status: 3 }];
  const b = Buffer.alloc(blockStatusPayloadSize(descriptors.length));
  encodeBlockStatus(b, 0, 1, descriptors);
  assert.equal(b.toString('hex'), '00000001' + '00010000' + '00000000' + 'fffff000' + '00000003');
  assert.deepEqual(decodeBlockStatus(b), { contextId: 1, extents: Uint32Array.from([65536, 0, 0xfffff000, 3]) });
});

test('BLOCK_STATUS: no extent, a ragged length or an extent of length 0 is malformed', () => {
  assert.match(decodeBlockStatus(Buffer.alloc(4)) as string, /of 4 bytes/);
  assert.match(decodeBlockStatus(Buffer.alloc(13)) as string, /of 13 bytes/);
  assert.match(decodeBlockStatus(Buffer.alloc(12)) as string, /length 0/);
  // The client refuses anything past the spec's 2^20 extents unread.
  assert.equal(MAX_STATUS_PAYLOAD, 4 + 8 * 2 ** 20);
});

test('ERROR: u32 error, u16 message length, message', () => {
  const msg = Buffer.from('no  space\nleft');
  const b = Buffer.alloc(errorPayloadSize(msg.length));
  encodeError(b, 0, 28, msg);
  assert.equal(b.toString('hex'), '0000001c' + '000e' + msg.toString('hex'));
  // The client keeps messages to one line.
  assert.deepEqual(decodeError(NBD_REPLY_TYPE_ERROR, b), { error: 28, message: 'no space left' });
});

test('ERROR_OFFSET: the same, then the u64 offset of the failure', () => {
  const msg = Buffer.from('bad sector');
  const b = Buffer.alloc(errorPayloadSize(msg.length, true));
  encodeError(b, 0, 5, msg, 2 ** 33);
  assert.equal(b.toString('hex'), '00000005' + '000a' + msg.toString('hex') + '0000000200000000');
  assert.deepEqual(decodeError(NBD_REPLY_TYPE_ERROR_OFFSET, b), { error: 5, message: 'bad sector', offset: 2 ** 33 });
});

test('error chunks whose message overruns them, or whose length is off, are malformed', () => {
  const b = Buffer.alloc(8);
  b.writeUInt16BE(10, 4);
  assert.match(decodeError(NBD_REPLY_TYPE_ERROR, b) as string, /overruns/);
  assert.match(decodeError(NBD_REPLY_TYPE_ERROR, Buffer.alloc(5)) as string, /of 5 bytes/);
  assert.match(decodeError(NBD_REPLY_TYPE_ERROR_OFFSET, Buffer.alloc(15)) as string, /wrong length/);
  // An unknown error type (bit 15 set) still decodes as error, message.
  assert.deepEqual(decodeError(0x8123, Buffer.alloc(6)), { error: 0, message: '' });
  assert.equal(MAX_ERROR_PAYLOAD, 6 + 4096 + 8);
});
