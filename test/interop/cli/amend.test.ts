import assert from 'node:assert/strict';
import { copyFile, open as openFile, readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { vdisk } from '../../helpers/cli.js';
import { haveTool, needTools, run, runOk } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';
import { assertChecks, assertSameContent, summary, twins, whileHeld } from './image-tools.js';

/**
 * vdisk amend against qemu-img amend on twin copies of the same images: the same exit status
 * and output, the same compat, lazy refcounts, refcount width, size and backing link in qemu-img
 * info afterwards, the same guest contents (qemu-img compare, snapshots too), and images that pass
 * qemu-img check, whether the amend succeeded or was refused.
 */
describe('vdisk amend against qemu-img amend', () => {
  let tmp: TmpDir;
  const p = (name: string) => tmp.path(name);
  const qcow2 = (name: string, size: string, ...opts: string[]) =>
    runOk('qemu-img', ['create', '-q', '-f', 'qcow2', ...(opts.length ? ['-o', opts.join(',')] : []), p(name), size]);
  const io = (name: string, ...cmds: string[]) => runOk('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), p(name)]);

  before(async () => {
    tmp = await makeTmpDir('vdisk-amend-');
    if (!haveTool('qemu-img') || !haveTool('qemu-io')) return;
    // v3 with data, zero clusters (plain and preallocated) and lazy refcounts; no backing file.
    await qcow2('v3.qcow2', '4M', 'lazy_refcounts=on');
    await io('v3.qcow2', 'write -P 0x11 0 1M', 'write -z 1M 128k', 'write -P 0x12 2M 64k', 'write -z 2M 64k');
    // An overlay: its zero clusters hide the backing file's data, so downgrading must keep them zero.
    await qcow2('base.qcow2', '4M');
    await io('base.qcow2', 'write -P 0x55 0 4M');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('overlay.qcow2')]);
    await io('overlay.qcow2', 'write -P 0x21 0 64k', 'write -z 1M 128k');
    await runOk('qemu-img', ['snapshot', '-c', 'first', p('overlay.qcow2')]);
    await io('overlay.qcow2', 'write -z 2M 64k', 'write -P 0x22 3M 64k', 'write -z 64k 64k');
    // v2, with a snapshot; 64-bit refcounts; extended L2; zstd with and without compressed clusters.
    await qcow2('v2.qcow2', '4M', 'compat=0.10');
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x31 0 192k', p('v2.qcow2')]);
    await runOk('qemu-img', ['snapshot', '-c', 'old', p('v2.qcow2')]);
    await qcow2('r64.qcow2', '4M', 'refcount_bits=64');
    await io('r64.qcow2', 'write -P 0x41 64k 256k');
    await qcow2('extl2.qcow2', '4M', 'extended_l2=on');
    await qcow2('zstd.qcow2', '4M', 'compression_type=zstd');
    await io('zstd.qcow2', 'write -P 0x51 0 64k');
    await copyFile(p('zstd.qcow2'), p('zstdc.qcow2'));
    await io('zstdc.qcow2', 'write -c -P 0x52 1M 64k');
    await runOk('qemu-img', ['create', '-q', '-f', 'raw', p('plain.raw'), '1M']);
  });
  after(async () => tmp.cleanup());

  /** Twin amends; then both copies agree in qemu-img info, content and check, whatever the outcome. */
  async function amendBoth(file: string, args: string[]): Promise<Awaited<ReturnType<typeof twins>>> {
    const r = await twins('amend', p(file), [...args, { image: true }]);
    if (file.endsWith('.raw')) return r;
    assert.deepEqual(await summary(r.vdiskFile), await summary(r.qemuFile), 'qemu-img info');
    await assertSameContent(r.vdiskFile, r.qemuFile);
    await assertChecks(r.vdiskFile);
    return r;
  }

  const DONE: { name: string; file: string; args: string[] }[] = [
    { name: 'compat=0.10 turns zero clusters into unallocated ones (no backing file)', file: 'v3.qcow2', args: ['-o', 'compat=0.10'] },
    { name: 'compat=0.10 keeps an overlay\'s zero clusters zero over its backing file', file: 'overlay.qcow2', args: ['-o', 'compat=0.10'] },
    { name: 'compat=v3 upgrades a v2 image with a snapshot', file: 'v2.qcow2', args: ['-o', 'compat=v3'] },
    { name: 'lazy_refcounts=off', file: 'v3.qcow2', args: ['-o', 'lazy_refcounts=off'] },
    { name: 'lazy_refcounts=on', file: 'r64.qcow2', args: ['-o', 'lazy_refcounts=on'] },
    { name: 'refcount_bits=1', file: 'v3.qcow2', args: ['-o', 'refcount_bits=1'] },
    { name: 'refcount_bits=8 on an image with a snapshot', file: 'overlay.qcow2', args: ['-o', 'refcount_bits=8'] },
    { name: 'refcount_bits=64', file: 'v3.qcow2', args: ['-o', 'refcount_bits=64'] },
    { name: 'refcount_bits=32 with compat=1.1 on a v2 image', file: 'v2.qcow2', args: ['-o', 'compat=1.1,refcount_bits=32'] },
    { name: 'compat=0.10 with refcount_bits=16 from 64-bit refcounts', file: 'r64.qcow2', args: ['-o', 'compat=0.10', '-o', 'refcount_bits=16'] },
    { name: 'size grows', file: 'overlay.qcow2', args: ['-o', 'size=6M'] },
    { name: 'size shrinks (amend needs no --shrink)', file: 'v3.qcow2', args: ['-q', '-o', 'size=1M'] },
    { name: 'the backing file as it is', file: 'overlay.qcow2', args: ['-o', 'backing_file=base.qcow2,backing_fmt=qcow2'] },
    { name: 'data_file_raw=off without a data file', file: 'v3.qcow2', args: ['-o', 'data_file_raw=off'] },
    { name: 'compat=0.10 of a zstd image without compressed clusters', file: 'zstd.qcow2', args: ['-f', 'qcow2', '-o', 'compat=0.10'] },
    { name: 'several changes at once', file: 'v2.qcow2', args: ['-o', 'compat=1.1,lazy_refcounts=on,refcount_bits=8,size=5M'] },
    // QEMU's option syntax: a bare name is on, "no" before it off; id= is the parser's own.
    { name: 'a bare flag (lazy_refcounts)', file: 'r64.qcow2', args: ['-o', 'lazy_refcounts'] },
    { name: 'a "no" flag (nolazy_refcounts) with id= and a hex number', file: 'v3.qcow2', args: ['-o', 'id=x,nolazy_refcounts', '-o', 'refcount_bits=0x20'] },
  ];

  for (const c of DONE) {
    it(c.name, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const r = await amendBoth(c.file, c.args);
      assert.equal(r.ours.code, 0);
    });
  }

  it('keeps what each snapshot holds', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const r = await amendBoth('overlay.qcow2', ['-o', 'compat=0.10']);
    for (const file of [r.vdiskFile, r.qemuFile]) await runOk('qemu-img', ['snapshot', '-a', 'first', file]);
    await assertSameContent(r.vdiskFile, r.qemuFile);
    await assertChecks(r.vdiskFile);
  });

  it('compat=1.1 gives v2 snapshot entries without extra data the disk size v3 needs', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    // QEMU writes extra data into v2 entries too; older writers did not. Strip it from the entry.
    const file = p('bare-v2.qcow2');
    await copyFile(p('v2.qcow2'), file);
    const fh = await openFile(file, 'r+');
    try {
      const header = Buffer.alloc(72);
      await fh.read(header, 0, 72, 0);
      assert.equal(header.readUInt32BE(60), 1, 'one snapshot');
      const at = Number(header.readBigUInt64BE(64));
      const entry = Buffer.alloc(1024);
      await fh.read(entry, 0, entry.length, at);
      const [idSize, nameSize, extra] = [entry.readUInt16BE(12), entry.readUInt16BE(14), entry.readUInt32BE(36)];
      const stripped = Buffer.concat([entry.subarray(0, 36), Buffer.alloc(4), entry.subarray(40 + extra, 40 + extra + idSize + nameSize)]);
      await fh.write(Buffer.concat([stripped, Buffer.alloc(extra)]), 0, stripped.length + extra, at);
    } finally {
      await fh.close();
    }
    const r = await amendBoth('bare-v2.qcow2', ['-o', 'compat=1.1']);
    assert.equal(r.ours.code, 0);
    const list = async (f: string) => (await runOk('qemu-img', ['snapshot', '-l', f])).split('\n').slice(1).join('\n');
    assert.equal(await list(r.vdiskFile), await list(r.qemuFile), 'qemu-img snapshot -l');
    for (const f of [r.vdiskFile, r.qemuFile]) await runOk('qemu-img', ['snapshot', '-a', 'old', f]);
    await assertSameContent(r.vdiskFile, r.qemuFile);
    await assertChecks(r.vdiskFile);
  });

  it('-o help lists the options, as qemu-img does', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const r = await twins('amend', p('v3.qcow2'), ['-o', 'help', { image: true }]);
    assert.match(r.ours.stdout, /^Amend options for 'qcow2':\n/);
    assert.equal((await vdisk(['amend', '-f', 'qcow2', '-o', 'help'])).stdout, (await run('qemu-img', ['amend', '-f', 'qcow2', '-o', 'help'])).stdout);
  });

  const REFUSED: { name: string; file: string; args: string[]; message: RegExp }[] = [
    { name: 'no -o', file: 'v3.qcow2', args: [], message: /Must specify options \(-o\)/ },
    { name: 'an unknown option', file: 'v3.qcow2', args: ['-o', 'bogus=1'], message: /Invalid parameter 'bogus'/ },
    { name: 'a creation-only option (cluster_size)', file: 'v3.qcow2', args: ['-o', 'cluster_size=4096'], message: /Invalid parameter 'cluster_size'.*only supported for image creation/ },
    { name: 'a creation-only option (extended_l2)', file: 'v3.qcow2', args: ['-o', 'extended_l2=on'], message: /only supported for image creation/ },
    { name: 'a creation-only option (encryption)', file: 'v3.qcow2', args: ['-o', 'encryption=on'], message: /only supported for image creation/ },
    { name: 'a creation-only option (preallocation)', file: 'v3.qcow2', args: ['-o', 'preallocation=full'], message: /only supported for image creation/ },
    { name: 'an unknown compat level', file: 'v3.qcow2', args: ['-o', 'compat=2.0'], message: /Unknown compatibility level 2\.0/ },
    { name: 'a refcount width that is no power of two', file: 'v3.qcow2', args: ['-o', 'refcount_bits=3'], message: /power of two/ },
    { name: 'a refcount width that is no number', file: 'v3.qcow2', args: ['-o', 'refcount_bits=abc'], message: /expects a number/ },
    { name: 'a bad boolean', file: 'v3.qcow2', args: ['-o', 'lazy_refcounts=maybe'], message: /expects 'on' or 'off'/ },
    { name: 'lazy refcounts on a v2 image', file: 'v2.qcow2', args: ['-o', 'lazy_refcounts=on'], message: /Lazy refcounts only supported with compatibility level 1\.1/ },
    { name: 'lazy refcounts with compat=0.10', file: 'r64.qcow2', args: ['-o', 'lazy_refcounts=on,compat=0.10'], message: /Lazy refcounts only supported/ },
    { name: 'other refcount widths on a v2 image', file: 'v2.qcow2', args: ['-o', 'refcount_bits=8'], message: /Refcount widths other than 16 bits require compatibility level 1\.1/ },
    { name: 'compat=0.10 with 64-bit refcounts', file: 'r64.qcow2', args: ['-o', 'compat=0.10'], message: /compat=0\.10 requires refcount_bits=16/ },
    { name: 'a refcount width too narrow for a count', file: 'overlay.qcow2', args: ['-o', 'refcount_bits=1'], message: /Cannot decrease refcount entry width to 1 bits: Cluster at offset 0x[0-9a-f]+ has a refcount of 2/ },
    { name: 'a new backing file', file: 'overlay.qcow2', args: ['-o', 'backing_file=other.qcow2'], message: /Cannot amend the backing file/ },
    { name: 'a new backing format', file: 'overlay.qcow2', args: ['-o', 'backing_fmt=raw'], message: /Cannot amend the backing file/ },
    { name: 'a data file on an image without one', file: 'v3.qcow2', args: ['-o', 'data_file=x.raw'], message: /data-file can only be set for images that use an external data file/ },
    { name: 'data_file_raw=on', file: 'v3.qcow2', args: ['-o', 'data_file_raw=on'], message: /data-file-raw cannot be set on existing images/ },
    { name: 'encryption options on an image without encryption', file: 'v3.qcow2', args: ['-o', 'encrypt.state=active'], message: /encryption not present/ },
    { name: 'compat=0.10 with extended L2 entries', file: 'extl2.qcow2', args: ['-o', 'compat=0.10'], message: /Cannot downgrade an image with incompatible features 0x10 set/ },
    { name: 'compat=0.10 with zstd-compressed clusters', file: 'zstdc.qcow2', args: ['-o', 'compat=0.10'], message: /zstd compression type and existing compressed clusters/ },
    { name: 'an invalid option list', file: 'v3.qcow2', args: ['-o', ',compat=1.1'], message: /Invalid option list/ },
    { name: 'an unknown flag', file: 'v3.qcow2', args: ['-o', 'nobogus'], message: /Invalid parameter 'bogus'/ },
    { name: 'a raw image', file: 'plain.raw', args: ['-f', 'raw', '-o', 'size=2M'], message: /Format driver 'raw' does not support option amendment/ },
  ];

  for (const c of REFUSED) {
    it(`refuses ${c.name}, as qemu-img does`, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const r = await amendBoth(c.file, c.args);
      assert.notEqual(r.ours.code, 0);
      assert.match(r.ours.stderr, c.message);
      if (c.file.endsWith('.raw')) assert.ok((await readFile(r.vdiskFile)).equals(await readFile(p(c.file))), 'the image is unchanged');
    });
  }

  it('refuses an image another process has open, and leaves it alone', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const file = p('held.qcow2');
    await copyFile(p('v3.qcow2'), file);
    const before = await readFile(file);
    const [ours, theirs] = await whileHeld(file, 'qcow2', async () => [
      await vdisk(['amend', '-o', 'compat=0.10', file]), await run('qemu-img', ['amend', '-o', 'compat=0.10', file]),
    ]);
    assert.equal(ours.code, theirs.code, `exit status (${theirs.stderr.trim()})`);
    assert.match(ours.stderr, /lock/);
    assert.equal(ours.stderr.trim().split('\n').length, 1, ours.stderr);
    assert.ok((await readFile(file)).equals(before), 'the image is unchanged');
  });
});
