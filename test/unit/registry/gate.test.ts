import assert from 'node:assert/strict';
import { mkdir, symlink } from 'node:fs/promises';
import { test } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import { fileDriver } from '../../../src/drivers/protocol/file/index.js';
import { nbdDriver } from '../../../src/drivers/protocol/nbd/index.js';
import { rawDriver } from '../../../src/drivers/format/raw/index.js';
import { Registry, type OpenGate } from '../../../src/registry/index.js';
import { openFds } from '../../helpers/fds.js';
import { refFormat, writeRefImage } from '../../helpers/test-formats.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

const registry = new Registry([fileDriver, nbdDriver, rawDriver, refFormat]);

/** allowed/top.img names `ref`; allowed/inside.img and outside/secret.img exist. */
async function layout(t: { after(fn: () => Promise<void>): void }, ref: string): Promise<TmpDir & { top: string }> {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  await mkdir(tmp.path('allowed'));
  await mkdir(tmp.path('outside'));
  await writeRefImage(tmp.path('allowed/inside.img'), '');
  await writeRefImage(tmp.path('outside/secret.img'), '');
  await writeRefImage(tmp.path('allowed/..data.img'), '');
  await symlink(tmp.path('outside/secret.img'), tmp.path('allowed/link.img'));
  await writeRefImage(tmp.path('allowed/top.img'), ref);
  return { ...tmp, top: tmp.path('allowed/top.img') };
}

async function openWith(top: string, gate?: OpenGate) {
  return registry.open(top, { readOnly: true, ...(gate ? { gate } : {}) });
}

async function refused(p: Promise<unknown>, what: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof BlockError, String(err));
    assert.equal(err.code, 'EPERM', `${what}: ${err.message}`);
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
}

test('without a gate, a reference relative to the image opens', async (t) => {
  const { top } = await layout(t, 'inside.img');
  await using node = await openWith(top);
  assert.equal(node.driver, 'ref');
  assert.equal(node.backing?.driver, 'ref');
  assert.match(node.backing!.filename, /allowed\/inside\.img$/);
});

test('the deny gate refuses every reference and leaks no descriptor', async (t) => {
  const { top } = await layout(t, 'inside.img');
  const before = openFds();
  await refused(openWith(top, { mode: 'deny' }), 'deny');
  assert.ok(openFds() <= before, 'descriptors leaked');
  // An image that names nothing still opens.
  const { top: plain } = await layout(t, '');
  await (await openWith(plain, { mode: 'deny' })).close();
});

test('an allow-list admits references inside its directories', async (t) => {
  const tmp = await layout(t, 'inside.img');
  await using node = await openWith(tmp.top, { mode: 'allow', dirs: [tmp.path('allowed')] });
  assert.ok(node.backing);
});

test('an allow-list refuses references outside, by path, by .. and by symlink', async (t) => {
  for (const ref of ['../outside/secret.img', 'link.img']) {
    const tmp = await layout(t, ref);
    const before = openFds();
    await refused(openWith(tmp.top, { mode: 'allow', dirs: [tmp.path('allowed')] }), ref);
    assert.ok(openFds() <= before, `${ref}: descriptors leaked`);
  }
  const tmp = await layout(t, 'x');
  await writeRefImage(tmp.top, tmp.path('outside/secret.img'));
  await refused(openWith(tmp.top, { mode: 'allow', dirs: [tmp.path('allowed')] }), 'absolute path');
  // The same symlink is fine when its target's directory is allowed too.
  const ok = await layout(t, 'link.img');
  await (await openWith(ok.top, { mode: 'allow', dirs: [ok.path('allowed'), ok.path('outside')] })).close();
});

test('an allow-list admits a file whose name merely starts with two dots', async (t) => {
  const tmp = await layout(t, '..data.img');
  await using node = await openWith(tmp.top, { mode: 'allow', dirs: [tmp.path('allowed')] });
  assert.match(node.backing!.filename, /\.\.data\.img$/);
});

test('a json: reference is refused by any gate but the permissive one', async (t) => {
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  await writeRefImage(tmp.path('inside.img'), '');
  const spec = `json:${JSON.stringify({ driver: 'ref', file: { driver: 'file', filename: tmp.path('inside.img') } })}`;
  await writeRefImage(tmp.path('top.img'), spec);
  await refused(openWith(tmp.path('top.img'), { mode: 'allow', dirs: [tmp.dir] }), 'json under allow');
  await refused(openWith(tmp.path('top.img'), { mode: 'deny' }), 'json under deny');
  await (await openWith(tmp.path('top.img'), { mode: 'permissive' })).close();
});

test('an allow-list refuses a network reference, even with the working directory allowed', async (t) => {
  // Taken for a path, nbd://… lies in the working directory: allowing that must not admit it.
  for (const ref of ['nbd://127.0.0.1:1/x', 'nbd+unix:///x?socket=/nonexistent.sock']) {
    const tmp = await layout(t, ref);
    await refused(openWith(tmp.top, { mode: 'allow', dirs: [tmp.path('allowed'), process.cwd()] }), ref);
  }
});
