import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError, NotSupportedError } from '../../../../src/core/errors.js';
import {
  blockCodeFor, NBD_CMD_FLAG_FAST_ZERO, NBD_EINVAL, NBD_EIO, NBD_ENOMEM, NBD_ENOSPC, NBD_ENOTSUP, NBD_EOVERFLOW, NBD_EPERM,
  NBD_ERRNO_NAMES, NBD_ESHUTDOWN, nbdErrorFor,
} from '../../../../src/nbd/protocol.js';

test('the error values are the Linux errno numbers of spec §3.8, named as errno names them', () => {
  assert.deepEqual(
    [NBD_EPERM, NBD_EIO, NBD_ENOMEM, NBD_EINVAL, NBD_ENOSPC, NBD_EOVERFLOW, NBD_ENOTSUP, NBD_ESHUTDOWN],
    [1, 5, 12, 22, 28, 75, 95, 108]);
  assert.deepEqual(Object.values(NBD_ERRNO_NAMES), ['EPERM', 'EIO', 'ENOMEM', 'EINVAL', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN']);
});

test('errors map to NBD values as the spec asks (ENOTSUP only for FAST_ZERO)', () => {
  assert.equal(nbdErrorFor(new BlockError('EROFS', 'ro')), NBD_EPERM);
  assert.equal(nbdErrorFor(new BlockError('ENOSPC', 'full')), NBD_ENOSPC);
  assert.equal(nbdErrorFor(new NotSupportedError('slow')), NBD_EINVAL);
  assert.equal(nbdErrorFor(new NotSupportedError('slow'), NBD_CMD_FLAG_FAST_ZERO), NBD_ENOTSUP);
  assert.equal(nbdErrorFor(new BlockError('ESHUTDOWN', 'bye')), NBD_ESHUTDOWN);
  assert.equal(nbdErrorFor(new Error('boom')), NBD_EIO);
});

test('what the server sends, the client reads back as the same kind of failure; unknown values are EINVAL', () => {
  for (const code of ['EPERM', 'ENOSPC', 'EINVAL', 'ESHUTDOWN', 'EIO'] as const) {
    assert.equal(blockCodeFor(nbdErrorFor(new BlockError(code, 'x'))), code);
  }
  assert.equal(blockCodeFor(nbdErrorFor(new NotSupportedError('slow'), NBD_CMD_FLAG_FAST_ZERO)), 'ENOTSUP');
  assert.equal(blockCodeFor(12345), 'EINVAL');
});
