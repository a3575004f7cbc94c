import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError, fromSystemError, isNotSupported, NotSupportedError } from '../../../src/core/errors.js';

const sys = (code: string, message = `${code}: something`) => Object.assign(new Error(message), { code });

test('BlockError carries a code, a context and a cause, and serialises to JSON', () => {
  const cause = new Error('underneath');
  const e = new BlockError('ENOSPC', 'No space', { node: 'n1', op: 'write', offset: 5, length: 6, path: '/x' }, { cause });
  assert.ok(e instanceof Error);
  assert.equal(e.name, 'BlockError');
  assert.equal(e.code, 'ENOSPC');
  assert.equal(e.cause, cause);
  const json = JSON.parse(JSON.stringify(e));
  assert.deepEqual(json, {
    name: 'BlockError', code: 'ENOSPC', message: 'No space',
    context: { node: 'n1', op: 'write', offset: 5, length: 6, path: '/x' }, cause: 'underneath',
  });
  assert.equal('cause' in new BlockError('EIO', 'x').toJSON(), false);
  assert.deepEqual(new BlockError('EIO', 'x').context, {});
});

test('NotSupportedError is an ENOTSUP BlockError', () => {
  const e = new NotSupportedError('nope', { op: 'write-zeroes' });
  assert.ok(e instanceof BlockError);
  assert.equal(e.code, 'ENOTSUP');
  assert.equal(e.name, 'NotSupportedError');
  assert.equal(isNotSupported(e), true);
  assert.equal(isNotSupported(new BlockError('ENOTSUP', 'x')), true);
  assert.equal(isNotSupported(new BlockError('EIO', 'x')), false);
  assert.equal(isNotSupported(sys('ENOTSUP')), false, 'a raw system error is not yet a BlockError');
  assert.equal(isNotSupported(undefined), false);
});

test('fromSystemError maps errno codes', () => {
  const table: [string, string][] = [
    ['ENOENT', 'ENOENT'], ['EACCES', 'EACCES'], ['EPERM', 'EPERM'], ['ENOSPC', 'ENOSPC'], ['EDQUOT', 'ENOSPC'],
    ['EROFS', 'EROFS'], ['EOPNOTSUPP', 'ENOTSUP'], ['ENOTSUP', 'ENOTSUP'], ['ENOSYS', 'ENOTSUP'], ['EXDEV', 'ENOTSUP'],
    ['EFBIG', 'ERANGE'], ['EISDIR', 'EINVAL'], ['ENOTDIR', 'ENOENT'], ['EAGAIN', 'E_LOCKED'], ['EBUSY', 'EBUSY'],
    ['ETIMEDOUT', 'ETIMEDOUT'], ['EIO', 'EIO'], ['EWHATEVER', 'EIO'],
  ];
  for (const [errno, code] of table) {
    const cause = sys(errno);
    const e = fromSystemError(cause, { op: 'read', offset: 1 });
    assert.equal(e.code, code, errno);
    assert.equal(e.cause, cause);
    assert.equal(e instanceof NotSupportedError, code === 'ENOTSUP', `${errno} NotSupportedError`);
    assert.doesNotMatch(e.message, /\n/);
  }
});

test('fromSystemError says what failed and where, in words', () => {
  const e = fromSystemError(sys('ENOENT'), { op: 'open', path: '/no/such.img' });
  assert.equal(e.message, "Could not open '/no/such.img': No such file or directory");
  assert.deepEqual(e.context, { op: 'open', path: '/no/such.img' });
  assert.equal(fromSystemError(sys('EIO', 'boom'), { op: 'read' }).message, 'read failed: Input/output error');
  assert.equal(fromSystemError(sys('EXDEV', 'cross-device'), {}).message, 'I/O failed: Invalid cross-device link');
  // An errno glibc's table lacks keeps the system's own message.
  assert.equal(fromSystemError(sys('EWEIRD', 'odd failure'), {}).message, 'I/O failed: odd failure');
  // Not an Error at all, or no code.
  assert.equal(fromSystemError('weird', { op: 'flush' }).code, 'EIO');
  assert.match(fromSystemError(new Error('plain'), { op: 'flush' }).message, /plain/);
  assert.equal(fromSystemError(null, {}).code, 'EIO');
});

test('fromSystemError passes BlockErrors through unchanged', () => {
  const e = new BlockError('E_CORRUPT', 'bad table');
  assert.equal(fromSystemError(e, { op: 'read' }), e);
});
