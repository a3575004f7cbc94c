import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { fileDriver } from '../../../src/drivers/protocol/file/index.js';
import { rawDriver } from '../../../src/drivers/format/raw/index.js';
import { PROBE_BYTES, Registry, registry as builtIn } from '../../../src/registry/index.js';
import { QFI_MAGIC, qfiFormat, refFormat, writeRefImage } from '../../helpers/test-formats.js';
import { makeTmpDir } from '../../helpers/tmp.js';

const head = (...bytes: number[]) => new Uint8Array([...bytes, ...new Uint8Array(100)]);

test('probing picks the format that recognises the header and falls back to raw last', () => {
  for (const r of [new Registry([rawDriver, qfiFormat, refFormat]), new Registry([qfiFormat, refFormat, rawDriver])]) {
    assert.equal(r.probe(head(...QFI_MAGIC)), 'qfi');
    assert.equal(r.probe(new TextEncoder().encode('VDREF\nx\n')), 'ref');
    assert.equal(r.probe(head(1, 2, 3)), 'raw');
    assert.equal(r.probe(new Uint8Array(0)), 'raw');
    assert.equal(r.probe(head(...QFI_MAGIC.subarray(0, 3))), 'raw', 'a partial magic is not the format');
  }
  assert.equal(builtIn.probe(head(9, 9, 9)), 'raw');
});

test('with no raw driver, an unrecognised header is E_WRONG_FORMAT', () => {
  assert.throws(() => new Registry([qfiFormat]).probe(head(1), 'x.img'), { code: 'E_WRONG_FORMAT' });
});

test('open() probes files: the named format opens, anything else is probed raw', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const r = new Registry([fileDriver, rawDriver, refFormat]);
  await writeRefImage(tmp.path('r.img'), '');
  await writeFile(tmp.path('plain.img'), new Uint8Array(5000).fill(1));
  await writeFile(tmp.path('empty.img'), new Uint8Array(0));
  // The magic just past what probes see does not count.
  const late = new Uint8Array(PROBE_BYTES + 4096);
  late.set(new TextEncoder().encode('VDREF\n\n'), PROBE_BYTES);
  await writeFile(tmp.path('late.img'), late);
  const drivers: string[] = [];
  for (const name of ['r.img', 'plain.img', 'empty.img', 'late.img']) {
    const node = await r.open(tmp.path(name), { readOnly: true });
    drivers.push(node.driver);
    await node.close();
  }
  assert.deepEqual(drivers, ['ref', 'raw', 'raw', 'raw']);
});
