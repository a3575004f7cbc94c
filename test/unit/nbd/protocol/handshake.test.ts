import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeClientFlags, decodeExportNameReply, decodeOptionHeader, decodeOptionReplyHeader, encodeClientFlags,
  encodeExportNameReply, encodeGreeting, encodeOption, encodeOptionError, encodeOptionHeader, encodeOptionReply,
  greetingFlags, greetingStyle, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES, NBD_OPT_GO, NBD_REP_ERR_UNSUP, NBD_REP_INFO,
} from '../../../../src/nbd/protocol.js';

// Layouts from specs/nbd.md §2 and §8.
const NBDMAGIC = Buffer.from('NBDMAGIC').toString('hex');
const IHAVEOPT = Buffer.from('IHAVEOPT').toString('hex');

test('the greeting is NBDMAGIC, IHAVEOPT, u16 handshake flags: 18 bytes', () => {
  const b = encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  assert.equal(b.toString('hex'), NBDMAGIC + IHAVEOPT + '0003');
  assert.equal(greetingStyle(b), 'newstyle');
  assert.equal(greetingFlags(b), 3);
});

test('a client tells oldstyle servers, bad magics and non-NBD peers from the first 16 bytes', () => {
  const oldstyle = Buffer.from(NBDMAGIC + '0000420281861253', 'hex');
  assert.equal(greetingStyle(oldstyle), 'oldstyle');
  assert.equal(greetingStyle(Buffer.from(NBDMAGIC + '0000000000000000', 'hex')), 'bad-newstyle-magic');
  assert.equal(greetingStyle(Buffer.from('SSH-2.0-OpenSSH_9', 'latin1')), 'not-nbd');
});

test('client flags are a u32', () => {
  const b = encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  assert.equal(b.toString('hex'), '00000003');
  assert.equal(decodeClientFlags(b), 3);
});

test('an option is IHAVEOPT, u32 option, u32 length, then the data', () => {
  const b = encodeOption(NBD_OPT_GO, Buffer.from('ab'));
  assert.equal(b.toString('hex'), IHAVEOPT + '00000007' + '00000002' + '6162');
  assert.deepEqual(decodeOptionHeader(b), { option: NBD_OPT_GO, length: 2 });
  // A header may announce more than follows (hostile tests send such lengths).
  assert.deepEqual(decodeOptionHeader(encodeOptionHeader(9, 0xffffffff)), { option: 9, length: 0xffffffff });
  const bad = Buffer.from(b);
  bad[0] ^= 1;
  assert.equal(decodeOptionHeader(bad), undefined);
});

test('an option reply is the reply magic, u32 option, u32 type, u32 length, then the data', () => {
  const b = encodeOptionReply(NBD_OPT_GO, NBD_REP_INFO, Buffer.from([0xaa]));
  assert.equal(b.toString('hex'), '0003e889045565a9' + '00000007' + '00000003' + '00000001' + 'aa');
  assert.deepEqual(decodeOptionReplyHeader(b), { option: NBD_OPT_GO, type: NBD_REP_INFO, length: 1 });
  const err = encodeOptionError(9, NBD_REP_ERR_UNSUP, 'no');
  assert.equal(err.toString('hex'), '0003e889045565a9' + '00000009' + '80000001' + '00000002' + '6e6f');
  assert.deepEqual(decodeOptionReplyHeader(err), { option: 9, type: NBD_REP_ERR_UNSUP, length: 2 });
  assert.equal(decodeOptionReplyHeader(Buffer.alloc(20)), undefined);
});

test('the NBD_OPT_EXPORT_NAME reply is u64 size, u16 flags, and 124 zeros unless NO_ZEROES', () => {
  const padded = encodeExportNameReply(2 ** 40, 0x0103, false);
  assert.equal(padded.length, 134);
  assert.equal(padded.toString('hex', 0, 10), '0000010000000000' + '0103');
  assert.ok(padded.subarray(10).every((x) => x === 0));
  const short = encodeExportNameReply(2 ** 40, 0x0103, true);
  assert.equal(short.length, 10);
  assert.deepEqual(decodeExportNameReply(short), { size: 2n ** 40n, flags: 0x0103 });
  assert.deepEqual(decodeExportNameReply(padded), { size: 2n ** 40n, flags: 0x0103 });
});
