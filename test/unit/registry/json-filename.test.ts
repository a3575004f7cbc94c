import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import { open, parseFilename } from '../../../src/registry/index.js';
import { makeTmpDir } from '../../helpers/tmp.js';

function oneLineEinval(fn: () => unknown, what: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof BlockError, `${what}: ${String(err)}`);
    assert.equal(err.code, 'EINVAL', what);
    assert.doesNotMatch(err.message, /[\r\n]/, `${what}: message spans lines: ${JSON.stringify(err.message)}`);
    assert.match(err.message, /json/);
    return true;
  }, what);
}

test('json: filenames parse into node specs; others stay filenames', () => {
  assert.equal(parseFilename('disk.img'), 'disk.img');
  assert.equal(parseFilename('/a/json:b'), '/a/json:b');
  assert.deepEqual(parseFilename('json:{"driver":"raw","file":{"driver":"file","filename":"a.img"}}'),
    { driver: 'raw', file: { driver: 'file', filename: 'a.img' } });
  assert.deepEqual(parseFilename('json:{"driver":"raw","file.driver":"file","file.filename":"a.img","file.cache":"none"}'),
    { driver: 'raw', file: { driver: 'file', filename: 'a.img', cache: 'none' } });
});

test('bad json: filenames fail with a one-line EINVAL', () => {
  for (const bad of ['json:', 'json:{', 'json:{"driver":', 'json:{"a":\n x}', 'json:{"driver":\r\n"raw",\n"x": nope}', "json:{'driver':'raw'}"]) {
    oneLineEinval(() => parseFilename(bad), JSON.stringify(bad));
  }
  for (const notObject of ['json:[]', 'json:"raw"', 'json:null', 'json:42']) {
    oneLineEinval(() => parseFilename(notObject), notObject);
  }
  oneLineEinval(() => parseFilename('json:{"file":{"driver":"file"}}'), 'no driver');
  oneLineEinval(() => parseFilename('json:{"driver":7}'), 'driver not a string');
});

test('open() takes json: filenames, nested and dotted alike', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const path = tmp.path('a.img');
  await writeFile(path, new Uint8Array(8192).fill(5));
  for (const spec of [
    { driver: 'raw', file: { driver: 'file', filename: path, 'request-alignment': 4096 } },
    { driver: 'raw', 'file.driver': 'file', 'file.filename': path, 'file.request-alignment': '4096' },
    { driver: 'raw', size: 4096, offset: 4096, file: path },
  ]) {
    await using node = await open(`json:${JSON.stringify(spec)}`);
    assert.equal(node.driver, 'raw');
    assert.equal(node.file?.driver, 'file');
    const buf = new Uint8Array(4096);
    await node.read(0, buf);
    assert.deepEqual(buf, new Uint8Array(4096).fill(5));
  }
  await using aligned = await open(`json:${JSON.stringify({ driver: 'raw', 'file.driver': 'file', 'file.filename': path, 'file.request-alignment': '4096' })}`);
  assert.equal(aligned.limits.requestAlignment, 4096);
});
