import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import { pattern } from '../../helpers/bytes.js';
import { serveCommand, serveOnSocket } from '../../helpers/nbd-server.js';
import { haveTool, needTools, run, runOk } from '../../helpers/oracles.js';
import { makeSparseFile, makeTmpDir, type TmpDir } from '../../helpers/tmp.js';
import { qemuNbd } from '../drivers/nbd/servers.js';

/*
 * libnbd's nbdinfo and qemu-img as the judges of `vdisk serve`: the same image served by
 * qemu-nbd and by vdisk must map the same (base:allocation and qemu:allocation-depth), compare
 * identical to the file, and describe itself as the spec says.
 */

const MiB = 1024 * 1024;
let tmp: TmpDir;
let raw: string;
let overlay: string;

before(async () => {
  tmp = await makeTmpDir('vdisk-nbdinfo-');
  raw = tmp.path('disk.raw');
  await makeSparseFile(raw, 64 * MiB, [
    { offset: MiB, data: pattern(300 * 1024, 1) },
    { offset: 10 * MiB, data: pattern(64 * 1024, 2) },
    { offset: 64 * MiB - 4096, data: pattern(4096, 3) },
  ]);
  // Without QEMU the tests that need the overlay skip (needTools says why).
  if (!haveTool('qemu-img') || !haveTool('qemu-io')) return;
  const base = tmp.path('base.qcow2');
  overlay = tmp.path('overlay.qcow2');
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', base, '64M']);
  await runOk('qemu-io', ['-c', 'write -P 1 0 4M', '-c', 'write -P 2 20M 1M', base]);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', overlay]);
  await runOk('qemu-io', ['-c', 'write -P 3 2M 1M', '-c', 'write -z 20M 512k', '-c', 'discard 3M 64k', '-c', 'write -P 4 40M 64k', overlay]);
});
after(() => tmp.cleanup());

/** What `nbdinfo ARGS` prints for the server that `start` brings up, stopping it afterwards. */
async function withServer<T>(start: () => Promise<{ uri: string; stop(): Promise<unknown> }>, fn: (uri: string) => Promise<T>): Promise<T> {
  const s = await start();
  try {
    return await fn(s.uri);
  } finally {
    await s.stop();
  }
}

const vdiskServer = (args: string[], name = 'disk') => async () => {
  const s = await serveOnSocket(tmp.dir, ['-x', name, ...args], name);
  return { uri: s.uri, stop: () => s.proc.stop() };
};
const qemuServer = (image: string, extra: string[]) => async () => {
  const s = await qemuNbd(tmp.path(`q${Math.random().toString(36).slice(2)}.sock`), image, extra);
  return { uri: s.uri, stop: () => s.stop() };
};

async function maps(t: TestContext, image: string, format: string, contexts: string[]): Promise<void> {
  if (!needTools(t, 'qemu-nbd', 'nbdinfo')) return;
  const args = ['-r', '-A', '-f', format];
  for (const ctx of contexts) {
    const map = (uri: string) => runOk('nbdinfo', [`--map=${ctx}`, uri]);
    const theirs = await withServer(qemuServer(image, args), map);
    const ours = await withServer(vdiskServer([...args, image]), map);
    assert.equal(ours, theirs, `${ctx} of ${format}`);
    if (ctx === 'base:allocation') assert.ok(ours.split('\n').length > 3, 'the image has several extents');
  }
}

describe('nbdinfo --map: vdisk serve and qemu-nbd agree', () => {
  it('on a sparse raw file', (t) => maps(t, raw, 'raw', ['base:allocation', 'qemu:allocation-depth']));
  it('on a qcow2 overlay with a backing file', async (t) => {
    if (needTools(t, 'qemu-img', 'qemu-io')) await maps(t, overlay, 'qcow2', ['base:allocation', 'qemu:allocation-depth']);
  });
});

describe('qemu-img compare over nbd://', () => {
  for (const [what, image, format] of [['raw', () => raw, 'raw'], ['qcow2 overlay', () => overlay, 'qcow2']] as const) {
    it(`${what}: identical to the file`, async (t) => {
      if (!needTools(t, 'qemu-img')) return;
      const r = await withServer(vdiskServer(['-r', '-f', format, image()]), (uri) => run('qemu-img', ['compare', '-f', format, image(), uri]));
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /Images are identical/);
    });
  }
});

it('nbdinfo --json shows size, read-only and base:allocation', async (t) => {
  if (!needTools(t, 'nbdinfo')) return;
  const json = await withServer(vdiskServer(['-r', '-D', 'described', raw]), (uri) => runOk('nbdinfo', ['--json', uri]));
  const info = JSON.parse(json) as { protocol: string; structured: boolean; exports: Record<string, unknown>[] };
  assert.equal(info.protocol, 'newstyle-fixed');
  assert.equal(info.structured, true);
  const [exp] = info.exports;
  assert.equal(exp!['export-name'], 'disk');
  assert.equal(exp!.description, 'described');
  assert.equal(exp!['export-size'], 64 * MiB);
  assert.equal(exp!.is_read_only, true);
  assert.deepEqual(exp!.contexts, ['base:allocation']);
  assert.equal(exp!.can_trim, false, 'a read-only export offers no writes');
});

it('nbdinfo --list shows every export', async (t) => {
  if (!needTools(t, 'nbdinfo')) return;
  const s = await serveOnSocket(tmp.dir, ['-r', '-e', '0', '--export', `name=first,file=${raw},description=one`, '--export', `name=second,file=${raw}`]);
  try {
    const out = await runOk('nbdinfo', ['--list', '--json', s.uri]);
    const names = (JSON.parse(out) as { exports: { 'export-name': string; description?: string }[] }).exports.map((e) => [e['export-name'], e.description]);
    assert.deepEqual(names, [['first', 'one'], ['second', undefined]]);
  } finally {
    await s.proc.stop();
  }
});

it('captive: nbdinfo starts vdisk serve by socket activation and the server exits with it', async (t) => {
  if (!needTools(t, 'nbdinfo')) return;
  const out = await runOk('nbdinfo', ['--size', '--', '[', ...serveCommand(['-r', raw]), ']']);
  assert.equal(out.trim(), String(64 * MiB));
  const map = await runOk('nbdinfo', ['--map', '--', '[', ...serveCommand(['-r', raw]), ']']);
  assert.match(map, /^\s+0\s+1048576\s+3\s+hole,zero$/m);
});
