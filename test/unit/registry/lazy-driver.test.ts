import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { BlockNode } from '../../../src/core/block-node.js';
import { memoryDriver } from '../../../src/drivers/protocol/memory/index.js';
import type { DriverDef } from '../../../src/registry/driver.js';
import { lazyDriver } from '../../../src/registry/lazy-driver.js';
import { Registry } from '../../../src/registry/registry.js';
import { makeTmpDir } from '../../helpers/tmp.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

test('a lazy driver loads once, on first open, and its own options are the ones checked', async () => {
  let loads = 0;
  const lazy = lazyDriver({ name: 'scratch', kind: 'protocol' }, async () => {
    loads++;
    return { ...memoryDriver, name: 'scratch' } as DriverDef;
  });
  const registry = new Registry([lazy]);
  assert.equal(loads, 0);
  assert.equal(registry.get('scratch').kind, 'protocol');
  await assert.rejects(registry.open({ driver: 'scratch', size: 4096, bogus: 1 }), /does not support the option 'bogus'/);
  const nodes: BlockNode[] = [await registry.open({ driver: 'scratch', size: 4096 }), await registry.open({ driver: 'scratch', size: 8192 })];
  assert.deepEqual(nodes.map((n) => n.size), [4096, 8192]);
  assert.equal(loads, 1);
  for (const n of nodes) await n.close();
});

test('only a lazy filter that inserts has insert', () => {
  const load = async () => memoryDriver;
  assert.equal(lazyDriver({ name: 'a', kind: 'filter' }, load).insert, undefined);
  assert.equal(typeof lazyDriver({ name: 'b', kind: 'filter', inserts: true }, load).insert, 'function');
});

test('the built-in registry loads the filters and the memory and null protocols only when they are opened', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  const log = tmp.path('loaded');
  // A resolve hook (on the loader thread) writes down every module of the tree as it loads.
  const hook = `import { appendFileSync } from 'node:fs';
    export async function resolve(s, c, next) { const r = await next(s, c); if (r.url.includes('/src/')) appendFileSync(${JSON.stringify(log)}, r.url + '\\n'); return r; }`;
  const script = `import { register } from 'node:module';
    register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hook)}));
    const { appendFileSync } = await import('node:fs');
    const { open } = await import('./src/registry/index.ts');
    appendFileSync(${JSON.stringify(log)}, 'OPEN\\n');
    const node = await open({ driver: 'copy-on-read', file: { driver: 'null-co', size: 4096 } });
    await node.close();`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const [before, after] = readFileSync(log, 'utf8').split('OPEN\n') as [string, string];
  for (const dir of ['drivers/filter/copy-on-read/', 'drivers/protocol/null/']) {
    assert.ok(!before.includes(dir), `${dir} is not loaded with the registry`);
    assert.ok(after.includes(dir), `${dir} loads when opened`);
  }
  assert.ok(!(before + after).includes('drivers/filter/preallocate/'), 'an unused filter never loads');
  assert.ok(!(before + after).includes('drivers/protocol/http/'), 'nor the http driver (node:http, node:https) unless opened');
});
