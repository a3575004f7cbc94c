import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import { open } from '../../../src/registry/index.js';
import { boolOption, enumOption, numberOption, stringOption, unflatten } from '../../../src/registry/options.js';
import { openFds } from '../../helpers/fds.js';
import { makeTmpDir } from '../../helpers/tmp.js';

async function einval(p: Promise<unknown>, pattern: RegExp, what: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof BlockError, `${what}: ${String(err)}`);
    assert.equal(err.code, 'EINVAL', `${what}: ${err.code} ${err.message}`);
    assert.match(err.message, pattern, what);
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
}

test('unknown drivers and unknown options are rejected with EINVAL naming them', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const path = tmp.path('a.img');
  await writeFile(path, new Uint8Array(4096));
  const before = openFds();
  await einval(open({ driver: 'qcow7' }), /qcow7/, 'unknown driver');
  await einval(open(path, { format: 'qcow7' }), /qcow7/, 'unknown format');
  await einval(open({ driver: 'raw', file: path, bogus: 1 }), /bogus/, 'unknown option');
  await einval(open({ driver: 'raw', file: { driver: 'file', filename: path, 'no-such': 'x' } }), /no-such/, 'unknown child option');
  await einval(open({ driver: 'raw', 'file.driver': 'file', 'file.filename': path, 'file.cachee': 'none' }), /cachee/, 'unknown dotted option');
  await einval(open({ driver: 'memory', size: 4096, filename: 'x' }), /filename/, 'option of another driver');
  await einval(open({ driver: 'raw', file: { driver: 'file', filename: path, 'request-alignment': 'abc' } }), /request-alignment/, 'bad number');
  await einval(open({ driver: 'raw', file: { driver: 'file', filename: path, 'request-alignment': 3000 } }), /power of two/, 'not a power of two');
  await einval(open({ driver: 'raw', file: { driver: 'file', filename: path, cache: 'sometimes' } }), /cache/, 'bad enum');
  await einval(open({ driver: 'raw', 'read-only': 'maybe', file: path }), /read-only/, 'bad bool');
  await einval(open({ driver: 'raw', 'detect-zeroes': 'always', file: path }), /detect-zeroes/, 'bad detect-zeroes');
  await einval(open({ driver: 'raw', offset: 8192, file: path }), /offset/, 'raw offset past the end');
  await einval(open({ driver: 'raw', offset: 1024, size: 4096, file: path }), /size/, 'raw slice past the end');
  // At most as many as before: a descriptor something else in the process had open may close
  // meanwhile (CI once saw 27 after 28); a leak can only add.
  const after = openFds();
  assert.ok(after <= before, `failed opens leaked descriptors: ${after} open, ${before} before`);
});

test('common options apply to any driver', async () => {
  await using node = await open({ driver: 'memory', size: 8192, 'node-name': 'scratch', 'read-only': 'on', 'detect-zeroes': 'unmap' });
  assert.equal(node.nodeName, 'scratch');
  assert.equal(node.readOnly, true);
  assert.equal(node.detectZeroes, 'unmap');
  await using nul = await open({ driver: 'null-co', 'read-zeroes': 'on' });
  assert.equal(nul.size, 1024 ** 3);
});

test('option readers accept typed values and the strings of dotted command lines', () => {
  const spec = { driver: 'x', n: '4096', m: 12, on: 'on', off: 'false', t: true, s: 'str', e: 'b' };
  assert.equal(numberOption(spec, 'n'), 4096);
  assert.equal(numberOption(spec, 'm'), 12);
  assert.equal(numberOption(spec, 'missing'), undefined);
  assert.equal(boolOption(spec, 'on'), true);
  assert.equal(boolOption(spec, 'off'), false);
  assert.equal(boolOption(spec, 't'), true);
  assert.equal(stringOption(spec, 's'), 'str');
  assert.equal(enumOption(spec, 'e', ['a', 'b'] as const), 'b');
  for (const bad of ['-1', '1.5', '0x10', '', ' 1']) assert.throws(() => numberOption({ driver: 'x', n: bad }, 'n'), { code: 'EINVAL' });
  for (const bad of [-1, 1.5, 2 ** 53, NaN]) assert.throws(() => numberOption({ driver: 'x', n: bad }, 'n'), { code: 'EINVAL' });
  assert.throws(() => boolOption({ driver: 'x', b: 'yes please' }, 'b'), { code: 'EINVAL' });
  assert.throws(() => stringOption({ driver: 'x', s: 5 }, 's'), { code: 'EINVAL' });
  assert.throws(() => enumOption({ driver: 'x', e: 'c' }, 'e', ['a', 'b'] as const), /one of a, b/);
});

test('dotted keys nest, in any order and mixed with nested objects', () => {
  const want = { driver: 'raw', file: { driver: 'file', filename: 'a.img', cache: 'none' } };
  assert.deepEqual(unflatten({ driver: 'raw', 'file.driver': 'file', 'file.filename': 'a.img', 'file.cache': 'none' }), want);
  assert.deepEqual(unflatten({ driver: 'raw', file: { driver: 'file' }, 'file.filename': 'a.img', 'file.cache': 'none' }), want);
  assert.deepEqual(unflatten({ driver: 'raw', 'file.filename': 'a.img', 'file.cache': 'none', file: { driver: 'file' } }), want);
  // A plain filename for a child combines with dotted options for it, whichever comes first.
  const named = { driver: 'raw', file: { filename: 'a.img', cache: 'none' } };
  assert.deepEqual(unflatten({ driver: 'raw', file: 'a.img', 'file.cache': 'none' }), named);
  assert.deepEqual(unflatten({ driver: 'raw', 'file.cache': 'none', file: 'a.img' }), named);
  assert.deepEqual(unflatten({ 'a.b.c': 1, 'a.b.d': 2, 'a.e': 3 }), { a: { b: { c: 1, d: 2 }, e: 3 } });
});

test('detect-zeroes=unmap needs discard=unmap, as in QEMU; discard=ignore drops discards', async () => {
  const message = /^setting detect-zeroes to unmap is not allowed without setting discard operation to unmap$/;
  await einval(open({ driver: 'memory', size: 8192, 'detect-zeroes': 'unmap', discard: 'ignore' }), message, 'spec');
  await einval(open({ driver: 'memory', size: 8192, 'detect-zeroes': 'unmap' }, { discard: 'ignore' }), message, 'spec under an ignoring open');
  await einval(open({ driver: 'memory', size: 8192 }, { detectZeroes: 'unmap', discard: 'ignore' }), message, 'open options');
  await einval(open({ driver: 'memory', size: 8192, discard: 'sometimes' }), /^Invalid discard option: sometimes$/, 'bad discard');
  for (const [spec, options] of [[{ discard: 'on' }, {}], [{}, { discard: 'unmap' as const }], [{}, {}]] as const) {
    await using node = await open({ driver: 'memory', size: 8192, 'detect-zeroes': 'unmap', ...spec }, options);
    assert.equal(node.detectZeroes, 'unmap');
    assert.equal(node.discardMode, 'unmap');
  }
  for (const [spec, options] of [[{ discard: 'off' }, {}], [{}, { discard: 'ignore' as const }]] as const) {
    await using node = await open({ driver: 'memory', size: 8192, ...spec }, options);
    assert.equal(node.discardMode, 'ignore');
    await node.write(0, new Uint8Array(8192).fill(7));
    await node.discard(0, 8192);
    const back = new Uint8Array(8192);
    await node.read(0, back);
    assert.ok(back.every((b) => b === 7), 'a discard under discard=ignore deallocated data');
  }
});
