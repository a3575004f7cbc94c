import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeInfoRequest, decodeMetaRequest, encodeInfoRequest, encodeMetaRequest, NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME,
  NBD_REP_ERR_INVALID, OptionError,
} from '../../../../src/nbd/protocol.js';

// Layouts from specs/nbd.md §2.5 and §2.6.

const invalid = (fn: () => unknown, pattern: RegExp) =>
  assert.throws(fn, (e: OptionError) => e instanceof OptionError && e.reply === NBD_REP_ERR_INVALID && pattern.test(e.message));

test('INFO/GO data: u32 name length, name, u16 count, u16 info types', () => {
  const b = encodeInfoRequest('disk', [NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE]);
  assert.equal(b.toString('hex'), '00000004' + '6469736b' + '0002' + '0001' + '0003');
  assert.deepEqual(decodeInfoRequest(b), { name: 'disk', infos: [1, 3] });
  assert.deepEqual(decodeInfoRequest(encodeInfoRequest('', [])), { name: '', infos: [] });
  assert.deepEqual(decodeInfoRequest(encodeInfoRequest('é', [])).name, 'é');
});

test('INFO/GO data whose lengths do not add up is refused with NBD_REP_ERR_INVALID', () => {
  invalid(() => decodeInfoRequest(Buffer.alloc(3)), /ends inside the export name length/);
  invalid(() => decodeInfoRequest(Buffer.from([0, 0, 0, 9, 0x61])), /runs past the end/);
  invalid(() => decodeInfoRequest(Buffer.concat([encodeInfoRequest('a', [1]), Buffer.from([0])])), /holds 3 bytes for 1/);
  const long = Buffer.alloc(4 + 4097 + 2, 0x78);
  long.writeUInt32BE(4097, 0);
  long.writeUInt16BE(0, 4 + 4097);
  invalid(() => decodeInfoRequest(long), /longer than 4096/);
  assert.throws(() => encodeInfoRequest('x'.repeat(4097), []), RangeError);
});

test('META_CONTEXT data: u32 name length, name, u32 count, (u32 length, query) each', () => {
  const b = encodeMetaRequest('d', ['base:allocation', 'qemu:']);
  assert.equal(b.toString('hex'), '00000001' + '64' + '00000002' + '0000000f' + Buffer.from('base:allocation').toString('hex')
    + '00000005' + Buffer.from('qemu:').toString('hex'));
  assert.deepEqual(decodeMetaRequest(b), { name: 'd', queries: ['base:allocation', 'qemu:'] });
  assert.deepEqual(decodeMetaRequest(encodeMetaRequest('', [])), { name: '', queries: [] });
});

test('META_CONTEXT data: overlong queries are skipped, impossible counts and leftovers refused', () => {
  // An overlong query cannot be encoded by our client; a hostile one sends it anyway.
  const q = Buffer.alloc(4 + 5000, 0x78);
  q.writeUInt32BE(5000, 0);
  const overlong = Buffer.concat([encodeMetaRequest('d', []).subarray(0, 5), Buffer.from([0, 0, 0, 2]), q, encodeMetaRequest('d', ['base:']).subarray(9)]);
  assert.deepEqual(decodeMetaRequest(overlong).queries, ['base:']);
  const req = encodeMetaRequest('d', ['q']);
  const huge = Buffer.from(req);
  huge.writeUInt32BE(0xffffffff, 5);
  invalid(() => decodeMetaRequest(huge), /too short for 4294967295 queries/);
  invalid(() => decodeMetaRequest(Buffer.concat([req, Buffer.from([1])])), /1 bytes follow the last query/);
  invalid(() => decodeMetaRequest(req.subarray(0, req.length - 1)), /runs past the end/);
  assert.throws(() => encodeMetaRequest('d', ['x'.repeat(4097)]), RangeError);
});
