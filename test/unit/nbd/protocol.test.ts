import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError, NotSupportedError } from '../../../src/core/errors.js';
import {
  decodeRequest, encodeChunkHeader, encodeOptionReplyHeader, encodeRequest, encodeSimpleReply, nbdErrorFor, blockCodeFor,
  NBD_CMD_FLAG_FAST_ZERO, NBD_EINVAL, NBD_ENOSPC, NBD_ENOTSUP, NBD_EPERM, NBD_EIO, NBD_REP_ERR_UNSUP,
} from '../../../src/nbd/protocol.js';

test('a request header round-trips with 64-bit offsets past 2^53', () => {
  const r = { flags: 0x1f, type: 7, cookie: 0xfedcba9876543210n, offset: (1n << 63n) + 5n, length: 0xffffffff };
  const b = encodeRequest(r);
  assert.equal(b.length, 28);
  assert.equal(b.toString('hex', 0, 4), '25609513');
  assert.deepEqual(decodeRequest(b), r);
  b[0] = 0;
  assert.equal(decodeRequest(b), undefined);
});

test('reply headers carry the spec layout', () => {
  assert.equal(encodeSimpleReply(22, 1n).toString('hex'), '67446698' + '00000016' + '0000000000000001');
  assert.equal(encodeChunkHeader({ flags: 1, type: 2, cookie: 3n, length: 12 }).toString('hex'),
    '668e33ef' + '0001' + '0002' + '0000000000000003' + '0000000c');
  assert.equal(encodeOptionReplyHeader(9, NBD_REP_ERR_UNSUP, 0).toString('hex'),
    '0003e889045565a9' + '00000009' + '80000001' + '00000000');
});

test('errors map to NBD values as the spec asks (ENOTSUP only for FAST_ZERO)', () => {
  assert.equal(nbdErrorFor(new BlockError('EROFS', 'ro')), NBD_EPERM);
  assert.equal(nbdErrorFor(new BlockError('ENOSPC', 'full')), NBD_ENOSPC);
  assert.equal(nbdErrorFor(new NotSupportedError('slow')), NBD_EINVAL);
  assert.equal(nbdErrorFor(new NotSupportedError('slow'), NBD_CMD_FLAG_FAST_ZERO), NBD_ENOTSUP);
  assert.equal(nbdErrorFor(new Error('boom')), NBD_EIO);
  assert.equal(blockCodeFor(12345), 'EINVAL');
  assert.equal(blockCodeFor(NBD_ENOSPC), 'ENOSPC');
});
