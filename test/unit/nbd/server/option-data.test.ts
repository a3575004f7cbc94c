import assert from 'node:assert/strict';
import { it } from 'node:test';
import { NBD_REP_ERR_INVALID } from '../../../../src/nbd/protocol.js';
import { OptionError, parseInfoRequest, parseMetaRequest } from '../../../../src/nbd/server/option-data.js';
import { infoRequest, metaRequest } from '../../../helpers/nbd-server.js';

const invalid = (fn: () => unknown, pattern: RegExp) =>
  assert.throws(fn, (e: OptionError) => e instanceof OptionError && e.reply === NBD_REP_ERR_INVALID && pattern.test(e.message));

it('parses INFO/GO data and refuses every length that does not add up', () => {
  assert.deepEqual(parseInfoRequest(infoRequest('disk', [1, 3])), { name: 'disk', infos: [1, 3] });
  assert.deepEqual(parseInfoRequest(infoRequest('')), { name: '', infos: [] });
  invalid(() => parseInfoRequest(Buffer.alloc(3)), /ends inside the export name length/);
  invalid(() => parseInfoRequest(Buffer.from([0, 0, 0, 9, 0x61])), /runs past the end/);
  invalid(() => parseInfoRequest(Buffer.concat([infoRequest('a', [1]), Buffer.from([0])])), /holds 3 bytes for 1/);
  const long = Buffer.alloc(4 + 4097 + 2, 0x78);
  long.writeUInt32BE(4097, 0);
  long.writeUInt16BE(0, 4 + 4097);
  invalid(() => parseInfoRequest(long), /longer than 4096/);
});

it('parses meta-context data; overlong queries are skipped, impossible counts refused', () => {
  assert.deepEqual(parseMetaRequest(metaRequest('d', ['base:allocation', 'qemu:'])), { name: 'd', queries: ['base:allocation', 'qemu:'] });
  assert.deepEqual(parseMetaRequest(metaRequest('d', ['x'.repeat(5000), 'base:'])).queries, ['base:']);
  const req = metaRequest('d', ['q']);
  const huge = Buffer.from(req);
  huge.writeUInt32BE(0xffffffff, 5);
  invalid(() => parseMetaRequest(huge), /too short for 4294967295 queries/);
  invalid(() => parseMetaRequest(Buffer.concat([req, Buffer.from([1])])), /1 bytes follow the last query/);
  invalid(() => parseMetaRequest(req.subarray(0, req.length - 1)), /runs past the end/);
});
