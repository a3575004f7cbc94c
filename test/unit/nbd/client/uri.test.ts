import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError } from '../../../../src/core/errors.js';
import { nbdFilename, parseNbdFilename } from '../../../../src/nbd/client/uri.js';

test('NBD URIs name a TCP or Unix server and an export, as doc/uri.md says', () => {
  assert.deepEqual(parseNbdFilename('nbd://localhost:10810/x'), { server: { type: 'inet', host: 'localhost', port: 10810 }, exportName: 'x', tls: false });
  assert.deepEqual(parseNbdFilename('nbd://example.com'), { server: { type: 'inet', host: 'example.com', port: 10809 }, exportName: '', tls: false });
  assert.deepEqual(parseNbdFilename('nbd+tcp://[::1]:99/a%20b/c'), { server: { type: 'inet', host: '::1', port: 99 }, exportName: 'a b/c', tls: false });
  assert.deepEqual(parseNbdFilename('nbd+unix:///disk?socket=/run/n.sock'), { server: { type: 'unix', path: '/run/n.sock' }, exportName: 'disk', tls: false });
  assert.deepEqual(parseNbdFilename('nbd+unix://?socket=/s'), { server: { type: 'unix', path: '/s' }, exportName: '', tls: false });
  assert.equal(parseNbdFilename('nbds://h/e').tls, true);
  assert.equal(parseNbdFilename('NBDS+UNIX:///e?socket=/s').tls, true);
});

test("QEMU's older nbd:host:port and nbd:unix:path forms", () => {
  assert.deepEqual(parseNbdFilename('nbd:localhost:10811:exportname=foo'), { server: { type: 'inet', host: 'localhost', port: 10811 }, exportName: 'foo', tls: false });
  assert.deepEqual(parseNbdFilename('nbd:unix:/tmp/s.sock'), { server: { type: 'unix', path: '/tmp/s.sock' }, exportName: '', tls: false });
  assert.deepEqual(parseNbdFilename('nbd:[::1]:5'), { server: { type: 'inet', host: '::1', port: 5 }, exportName: '', tls: false });
});

test('bad NBD filenames are one-line EINVAL errors', () => {
  for (const bad of ['nbd://h:0/x', 'nbd://h:70000/x', 'nbd+unix:///x', 'nbd+unix://host/x?socket=/s', 'nbd+unix:///x?socket=/s&foo=1',
    'nbd://h/x?socket=/s', 'nbd://user@h/x', 'nbd://h/%zz', 'nbd:', 'nbd:unix:', 'http://h/x', `nbd://h/${'e'.repeat(5000)}`]) {
    assert.throws(() => parseNbdFilename(bad), (e: unknown) => e instanceof BlockError && e.code === 'EINVAL' && !e.message.includes('\n'), bad);
  }
});

test('filenames shown for a node are the ones QEMU shows', () => {
  assert.equal(nbdFilename({ type: 'unix', path: '/s' }, 'e'), 'nbd+unix:///e?socket=/s');
  assert.equal(nbdFilename({ type: 'unix', path: '/s' }, ''), 'nbd+unix://?socket=/s');
  assert.equal(nbdFilename({ type: 'inet', host: 'h', port: 10809 }, 'e'), 'nbd://h:10809/e');
  assert.equal(nbdFilename({ type: 'inet', host: 'h', port: 1 }, ''), 'nbd://h:1');
});
