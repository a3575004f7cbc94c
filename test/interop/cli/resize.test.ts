import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { vdisk } from '../../helpers/cli.js';
import { haveTool, needTools, run, runOk } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';
import { assertChecks, assertSameContent, info, summary, twins, whileHeld } from './image-tools.js';

const MiB = 1024 * 1024;

/**
 * vdisk resize against qemu-img resize on twin copies of the same images: the same exit status
 * and output, the same virtual size and contents afterwards (qemu-img compare), and images that
 * pass qemu-img check.
 */
describe('vdisk resize against qemu-img resize', () => {
  let tmp: TmpDir;
  const p = (name: string) => tmp.path(name);

  before(async () => {
    tmp = await makeTmpDir('vdisk-resize-');
    if (!haveTool('qemu-img') || !haveTool('qemu-io')) return;
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', p('a.qcow2'), '4M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 3M 64k', p('a.qcow2')]);
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', p('a.raw'), '4M']);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 1M 1M', p('a.raw')]);
    // An overlay shorter than its backing file: growing it must not show the backing's tail.
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', p('base.qcow2'), '8M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x44 0 8M', p('base.qcow2')]);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('short.qcow2'), '1M']);
    // Snapshots: a v2 image cannot be resized at all, a v3 one can grow.
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', p('v2snap.qcow2'), '4M']);
    await runOk('qemu-img', ['snapshot', '-c', 's1', p('v2snap.qcow2')]);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', p('v3snap.qcow2'), '4M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x55 0 64k', p('v3snap.qcow2')]);
    await runOk('qemu-img', ['snapshot', '-c', 's1', p('v3snap.qcow2')]);
  });
  after(async () => tmp.cleanup());

  const DONE: { name: string; file: string; format: string; args: (string | { image: true })[] }[] = [
    { name: 'qcow2: grow to a size', file: 'a.qcow2', format: 'qcow2', args: [{ image: true }, '6M'] },
    { name: 'qcow2: grow by an amount, quiet', file: 'a.qcow2', format: 'qcow2', args: ['-q', { image: true }, '+1536K'] },
    { name: 'qcow2: shrink with --shrink', file: 'a.qcow2', format: 'qcow2', args: ['--shrink', { image: true }, '-2M'] },
    { name: 'qcow2: shrink inside a cluster', file: 'a.qcow2', format: 'qcow2', args: ['--shrink', '-f', 'qcow2', { image: true }, '3200k'] },
    { name: 'qcow2: preallocation=metadata', file: 'a.qcow2', format: 'qcow2', args: ['--preallocation=metadata', { image: true }, '8M'] },
    { name: 'qcow2: preallocation=falloc', file: 'a.qcow2', format: 'qcow2', args: ['--preallocation', 'falloc', { image: true }, '+3M'] },
    { name: 'qcow2: preallocation=full', file: 'a.qcow2', format: 'qcow2', args: ['--preallocation=full', { image: true }, '5M'] },
    { name: 'qcow2: overlay grown over a longer backing file', file: 'short.qcow2', format: 'qcow2', args: [{ image: true }, '6M'] },
    { name: 'qcow2: v3 with a snapshot grows', file: 'v3snap.qcow2', format: 'qcow2', args: [{ image: true }, '5M'] },
    { name: 'raw: grow', file: 'a.raw', format: 'raw', args: ['-f', 'raw', { image: true }, '+1M'] },
    { name: 'raw: shrink with --shrink', file: 'a.raw', format: 'raw', args: ['-f', 'raw', '--shrink', { image: true }, '1536K'] },
    { name: 'raw: preallocation=falloc', file: 'a.raw', format: 'raw', args: ['-f', 'raw', '--preallocation=falloc', { image: true }, '6M'] },
    { name: 'raw: preallocation=full', file: 'a.raw', format: 'raw', args: ['-f', 'raw', '--preallocation=full', { image: true }, '5M'] },
  ];

  for (const c of DONE) {
    it(c.name, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const r = await twins('resize', p(c.file), c.args);
      assert.equal(r.ours.code, 0);
      assert.deepEqual(await summary(r.vdiskFile, c.format), await summary(r.qemuFile, c.format), 'qemu-img info');
      await assertSameContent(r.vdiskFile, r.qemuFile, [c.format, c.format]);
      if (c.format === 'qcow2') await assertChecks(r.vdiskFile);
    });
  }

  it('preallocation allocates the new clusters, as qemu-img does', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    for (const mode of ['metadata', 'falloc', 'full']) {
      const r = await twins('resize', p('a.qcow2'), [`--preallocation=${mode}`, { image: true }, '8M']);
      const allocated = async (file: string) => JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', 'qcow2', file]))
        .filter((e: { start: number; present: boolean }) => e.start >= 4 * MiB && !e.present).length;
      assert.equal(await allocated(r.vdiskFile), 0, `${mode}: every cluster past the old end is allocated`);
      assert.equal(await allocated(r.qemuFile), 0, `${mode}: qemu-img allocates them too`);
    }
  });

  const REFUSED: { name: string; file: string; args: (string | { image: true })[] }[] = [
    { name: 'shrinking without --shrink', file: 'a.qcow2', args: [{ image: true }, '2M'] },
    { name: 'shrinking by an amount without --shrink', file: 'a.raw', args: ['-f', 'raw', { image: true }, '-1M'] },
    { name: 'a size that is no number', file: 'a.qcow2', args: [{ image: true }, '12x'] },
    { name: 'a size past 2^64', file: 'a.qcow2', args: [{ image: true }, '99999E'] },
    { name: 'a size of 2^63 (negative as int64)', file: 'a.qcow2', args: [{ image: true }, '8E'] },
    { name: 'shrinking to nothing', file: 'a.qcow2', args: ['--shrink', { image: true }, '-4M'] },
    { name: 'no size', file: 'a.qcow2', args: [{ image: true }] },
    { name: 'two sizes', file: 'a.qcow2', args: [{ image: true }, '1M', '2M'] },
    { name: 'an unknown option', file: 'a.qcow2', args: ['--bogus', { image: true }, '8M'] },
    { name: 'an unknown preallocation mode', file: 'a.qcow2', args: ['--preallocation=some', { image: true }, '8M'] },
    { name: 'preallocation when shrinking', file: 'a.qcow2', args: ['--shrink', '--preallocation=full', { image: true }, '1M'] },
    { name: 'preallocation=metadata on raw', file: 'a.raw', args: ['-f', 'raw', '--preallocation=metadata', { image: true }, '8M'] },
    { name: 'the wrong format', file: 'a.raw', args: ['-f', 'qcow2', { image: true }, '8M'] },
    { name: 'a v2 image with snapshots', file: 'v2snap.qcow2', args: [{ image: true }, '8M'] },
  ];

  for (const c of REFUSED) {
    it(`refuses ${c.name}, as qemu-img does, and leaves the image alone`, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const r = await twins('resize', p(c.file), c.args);
      assert.notEqual(r.ours.code, 0);
      assert.ok((await readFile(r.vdiskFile)).equals(await readFile(p(c.file))), 'the image is unchanged');
    });
  }

  it('shrinking without --shrink says how, as qemu-img does', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const r = await twins('resize', p('a.qcow2'), [{ image: true }, '1M']);
    assert.match(r.ours.stderr, /Use the --shrink option to perform a shrink operation\./);
    assert.match(r.theirs.stderr, /Use the --shrink option to perform a shrink operation\./);
  });

  it('refuses an image another process has open, and leaves it alone', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const file = p('held.qcow2');
    await runOk('qemu-img', ['convert', '-O', 'qcow2', p('a.qcow2'), file]);
    const before = await readFile(file);
    const [ours, theirs] = await whileHeld(file, 'qcow2', async () => [await vdisk(['resize', file, '8M']), await run('qemu-img', ['resize', file, '8M'])]);
    assert.equal(ours.code, theirs.code, `exit status (${theirs.stderr.trim()})`);
    assert.match(ours.stderr, /lock/);
    assert.equal(ours.stderr.trim().split('\n').length, 1, ours.stderr);
    assert.ok((await readFile(file)).equals(before), 'the image is unchanged');
    assert.equal((await info(file))['virtual-size'], 4 * MiB);
  });
});
