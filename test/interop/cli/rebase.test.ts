import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile, rename } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { vdisk } from '../../helpers/cli.js';
import { haveTool, needTools, run, runOk } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';
import { assertChecks, assertSameContent, summary, twins, whileHeld } from './image-tools.js';

const MiB = 1024 * 1024;

/**
 * vdisk rebase against qemu-img rebase on twin copies of the same images: the same exit status
 * and output, the same backing link in qemu-img info, images that pass qemu-img check, and for
 * safe rebases the same guest contents as before the rebase (qemu-img compare against the
 * untouched original chain) with as much allocated in the image as qemu-img allocates.
 */
describe('vdisk rebase against qemu-img rebase', () => {
  let tmp: TmpDir;
  const p = (name: string) => tmp.path(name);
  const create = (name: string, size: string, ...args: string[]) => runOk('qemu-img', ['create', '-q', '-f', 'qcow2', ...args, p(name), size]);
  const overlay = (name: string, backing: string, format = 'qcow2', ...args: string[]) =>
    runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', format, ...args, p(name)]);
  const io = (name: string, ...cmds: string[]) => runOk('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), p(name)]);

  before(async () => {
    tmp = await makeTmpDir('vdisk-rebase-');
    if (!haveTool('qemu-img') || !haveTool('qemu-io')) return;
    // base ← mid ← top, each layer writing something, zeros included.
    await create('base.qcow2', '8M');
    await io('base.qcow2', 'write -P 0x11 0 8M');
    await overlay('mid.qcow2', 'base.qcow2');
    await io('mid.qcow2', 'write -P 0x22 1M 1M', 'write -z 3M 64k', 'write -P 0x23 6M 4k');
    await overlay('top.qcow2', 'mid.qcow2');
    await io('top.qcow2', 'write -P 0x33 1536k 64k', 'write -P 0x34 5M 4k', 'write -z 7M 64k');
    // An unrelated image with data of its own, and a raw one.
    await create('other.qcow2', '8M');
    await io('other.qcow2', 'write -P 0x44 2M 2M', 'write -P 0x45 7M 1M');
    await runOk('qemu-img', ['convert', '-O', 'raw', p('other.qcow2'), p('other.raw')]);
    await create('short.qcow2', '2M');
    await io('short.qcow2', 'write -P 0x55 0 2M');
    // An overlay longer than its backing file, and a compat=0.10 one (no zero clusters there).
    await overlay('long.qcow2', 'short.qcow2', 'qcow2', '-o', 'size=8M');
    await io('long.qcow2', 'write -P 0x66 1M 64k');
    await overlay('v2.qcow2', 'mid.qcow2', 'qcow2', '-o', 'compat=0.10');
    await io('v2.qcow2', 'write -P 0x77 4M 64k');
    // An image without a backing file.
    await create('alone.qcow2', '8M');
    await io('alone.qcow2', 'write -P 0x88 0 64k');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', p('plain.raw'), '1M']);
    // Images in a directory of their own, naming their backing file relative to it.
    await mkdir(p('sub'));
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '../base.qcow2', '-F', 'qcow2', p('sub/inner.qcow2')]);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x99 0 64k', p('sub/inner.qcow2')]);
  });
  after(async () => tmp.cleanup());

  /** Bytes the image allocates itself, as qemu-img map sees them (without opening its backing file). */
  async function allocated(file: string): Promise<number> {
    const spec = `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: file }, backing: null })}`;
    const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', spec])) as { length: number; depth: number; present: boolean }[];
    return map.filter((e) => e.depth === 0 && e.present).reduce((n, e) => n + e.length, 0);
  }

  const SAFE: { name: string; file: string; args: string[] }[] = [
    { name: 'onto a backing file further down its chain', file: 'top.qcow2', args: ['-b', 'base.qcow2', '-F', 'qcow2'] },
    { name: 'onto an unrelated image', file: 'top.qcow2', args: ['-b', 'other.qcow2', '-F', 'qcow2'] },
    { name: 'onto a raw image', file: 'top.qcow2', args: ['-b', 'other.raw', '-F', 'raw'] },
    { name: 'onto no backing file (-b \'\')', file: 'top.qcow2', args: ['-b', ''] },
    { name: 'onto a backing file shorter than the image', file: 'top.qcow2', args: ['-b', 'short.qcow2', '-F', 'qcow2'] },
    { name: 'an image longer than its old backing file', file: 'long.qcow2', args: ['-b', 'other.qcow2', '-F', 'qcow2'] },
    { name: 'a compat=0.10 image', file: 'v2.qcow2', args: ['-b', 'other.qcow2', '-F', 'qcow2'] },
    { name: 'an image without a backing file', file: 'alone.qcow2', args: ['-b', 'other.qcow2', '-F', 'qcow2'] },
    { name: 'onto its own backing file, quietly', file: 'top.qcow2', args: ['-q', '-b', 'mid.qcow2', '-F', 'qcow2'] },
    { name: 'a name relative to the image\'s directory', file: 'sub/inner.qcow2', args: ['-b', '../other.qcow2', '-F', 'qcow2'] },
  ];

  for (const c of SAFE) {
    it(`safe: ${c.name}; the image reads the same`, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const r = await twins('rebase', p(c.file), [...c.args, { image: true }]);
      assert.equal(r.ours.code, 0);
      assert.deepEqual(await summary(r.vdiskFile), await summary(r.qemuFile), 'qemu-img info');
      await assertSameContent(r.vdiskFile, p(c.file));
      await assertSameContent(r.qemuFile, p(c.file));
      await assertChecks(r.vdiskFile);
      assert.equal(await allocated(r.vdiskFile), await allocated(r.qemuFile), 'bytes allocated in the image');
    });
  }

  it('-b \'\' leaves no backing file', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const r = await twins('rebase', p('top.qcow2'), ['-b', '', { image: true }]);
    const s = await summary(r.vdiskFile);
    assert.equal(s.backing, undefined);
    assert.equal(s.backingFormat, undefined);
  });

  it('unsafe: changes the link only, to a file that need not exist', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    for (const args of [['-u', '-b', 'other.qcow2', '-F', 'qcow2'], ['-u', '-b', 'nowhere.qcow2', '-F', 'qcow2'], ['-u'], ['-u', '-b', '']]) {
      const r = await twins('rebase', p('top.qcow2'), [...args, { image: true }]);
      assert.equal(r.ours.code, 0, args.join(' '));
      assert.deepEqual(await summary(r.vdiskFile), await summary(r.qemuFile), `qemu-img info after ${args.join(' ')}`);
      await assertChecks(r.vdiskFile, 'qcow2', true);
      // The image's own clusters are untouched: only the header changed.
      assert.equal(await allocated(r.vdiskFile), await allocated(p('top.qcow2')));
    }
  });

  it('unsafe: repairs the link of an image whose backing file moved', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    await copyFile(p('mid.qcow2'), p('moved-from.qcow2'));
    await overlay('orphan.qcow2', 'moved-from.qcow2');
    await io('orphan.qcow2', 'write -P 0x5a 0 64k');
    await rename(p('moved-from.qcow2'), p('moved-to.qcow2'));
    assert.notEqual((await run('qemu-img', ['info', '--backing-chain', p('orphan.qcow2')])).code, 0, 'the chain is broken');
    const r = await twins('rebase', p('orphan.qcow2'), ['-u', '-b', 'moved-to.qcow2', '-F', 'qcow2', { image: true }]);
    assert.equal(r.ours.code, 0);
    assert.equal((await summary(r.vdiskFile)).backing, 'moved-to.qcow2');
    await assertSameContent(r.vdiskFile, r.qemuFile);
    await assertChecks(r.vdiskFile);
  });

  const REFUSED: { name: string; file: string; args: string[]; message: RegExp }[] = [
    { name: 'safe mode without -b', file: 'top.qcow2', args: [], message: /Must specify backing file \(-b\) or use unsafe mode \(-u\)/ },
    { name: 'an unknown backing format', file: 'top.qcow2', args: ['-b', 'other.qcow2', '-F', 'bogus'], message: /Invalid format name: 'bogus'/ },
    { name: 'a new backing file that does not open', file: 'top.qcow2', args: ['-b', 'nowhere.qcow2', '-F', 'qcow2'], message: /Could not open new backing file 'nowhere\.qcow2'/ },
    { name: 'a new backing file without its format', file: 'top.qcow2', args: ['-b', 'other.qcow2'], message: /backing format must be specified/ },
    { name: 'an unsafe link without its format', file: 'top.qcow2', args: ['-u', '-b', 'other.qcow2'], message: /backing format must be specified/ },
    { name: 'a name longer than qcow2 can hold', file: 'top.qcow2', args: ['-u', '-b', 'x'.repeat(1100), '-F', 'qcow2'], message: /Could not change the backing file to 'x+': Invalid argument/ },
    { name: 'a raw image', file: 'plain.raw', args: ['-f', 'raw', '-b', 'other.qcow2', '-F', 'qcow2'], message: /Could not change the backing file to 'other\.qcow2': Operation not supported/ },
    { name: 'an unknown option', file: 'top.qcow2', args: ['-x', '-b', 'other.qcow2'], message: /invalid option/ },
  ];

  for (const c of REFUSED) {
    it(`refuses ${c.name}, as qemu-img does, and leaves the image alone`, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const r = await twins('rebase', p(c.file), [...c.args, { image: true }]);
      assert.notEqual(r.ours.code, 0);
      assert.match(r.ours.stderr, c.message);
      assert.ok((await readFile(r.vdiskFile)).equals(await readFile(p(c.file))), 'the image is unchanged');
    });
  }

  it('refuses two image names', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const args = ['rebase', '-b', 'other.qcow2', '-F', 'qcow2', p('top.qcow2'), p('mid.qcow2')];
    const [ours, theirs] = [await vdisk(args), await run('qemu-img', args)];
    assert.equal(ours.code, theirs.code);
    assert.match(ours.stderr, /Expecting one image file name/);
  });

  it('refuses an image another process has open, and leaves it alone', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const file = p('held.qcow2');
    await copyFile(p('top.qcow2'), file);
    const before = await readFile(file);
    const args = (f: string) => ['rebase', '-b', 'base.qcow2', '-F', 'qcow2', f];
    const [ours, theirs] = await whileHeld(file, 'qcow2', async () => [await vdisk(args(file)), await run('qemu-img', args(file))]);
    assert.equal(ours.code, theirs.code, `exit status (${theirs.stderr.trim()})`);
    assert.match(ours.stderr, /lock/);
    assert.equal(ours.stderr.trim().split('\n').length, 1, ours.stderr);
    assert.ok((await readFile(file)).equals(before), 'the image is unchanged');
  });

  it('-p reports progress up to 100%', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const file = p('progress.qcow2');
    await copyFile(p('top.qcow2'), file);
    const r = await vdisk(['rebase', '-p', '-b', 'other.qcow2', '-F', 'qcow2', file]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^ {4}\(0\.00\/100%\)\r.*\(100\.00\/100%\)\r\n$/s);
    assert.equal((await summary(file)).size, 8 * MiB);
  });
});
