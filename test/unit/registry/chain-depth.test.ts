import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import { fileDriver } from '../../../src/drivers/protocol/file/index.js';
import { rawDriver } from '../../../src/drivers/format/raw/index.js';
import { DEFAULT_MAX_CHAIN_DEPTH, Registry } from '../../../src/registry/index.js';
import { openFds } from '../../helpers/fds.js';
import { refFormat, refOpens, writeRefImage } from '../../helpers/test-formats.js';
import { makeTmpDir } from '../../helpers/tmp.js';

const registry = new Registry([fileDriver, rawDriver, refFormat]);

test('an image that references itself fails with E_CORRUPT naming the depth limit', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const loop = tmp.path('loop.img');
  await writeRefImage(loop, 'loop.img');
  const before = openFds();
  for (const [limit, opts] of [[DEFAULT_MAX_CHAIN_DEPTH, {}], [5, { maxChainDepth: 5 }]] as const) {
    refOpens.length = 0;
    await assert.rejects(registry.open(loop, { readOnly: true, ...opts }), (err: unknown) => {
      assert.ok(err instanceof BlockError);
      assert.equal(err.code, 'E_CORRUPT');
      assert.match(err.message, new RegExp(`\\b${limit}\\b`));
      assert.doesNotMatch(err.message, /\n/);
      return true;
    });
    // It followed the loop to the limit and no further.
    assert.equal(refOpens.length, limit + 1);
    assert.deepEqual(refOpens.map((o) => o.depth), [...Array(limit + 1).keys()]);
  }
  assert.ok(openFds() <= before, 'descriptors leaked by the failed opens');
});

test('a chain exactly as deep as the limit opens; one more image does not', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  // a -> b -> c: c is two references below a.
  await writeRefImage(tmp.path('c.img'), '');
  await writeRefImage(tmp.path('b.img'), 'c.img');
  await writeRefImage(tmp.path('a.img'), 'b.img');
  const node = await registry.open(tmp.path('a.img'), { readOnly: true, maxChainDepth: 2 });
  assert.equal(path.basename(node.backing!.backing!.filename), 'c.img');
  await node.close();
  await assert.rejects(registry.open(tmp.path('a.img'), { readOnly: true, maxChainDepth: 1 }), { code: 'E_CORRUPT' });
});
