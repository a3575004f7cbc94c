import assert from 'node:assert/strict';
import { copyFile, mkdir, open } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { pattern } from '../../helpers/bytes.js';
import { vdisk } from '../../helpers/cli.js';
import { haveTool, needTools, run, runOk } from '../../helpers/oracles.js';
import { buildVariant, QCOW2_VARIANTS } from '../../helpers/qcow2-images.js';
import { makeSparseFile, makeTmpDir, type TmpDir } from '../../helpers/tmp.js';
import { qemuNbd, type Server } from '../drivers/nbd/servers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 64 * MiB;

/**
 * vdisk measure and qemu-img measure on the same command lines: the same output to the byte
 * (human and JSON), or, where qemu-img refuses, one line on stderr that starts with qemu-img's
 * first line and exit status 1.
 */
async function same(args: readonly string[]): Promise<void> {
  const what = `measure ${args.join(' ')}`;
  const q = await run('qemu-img', ['measure', ...args]);
  const v = await vdisk(['measure', ...args]);
  if (q.code === 0) {
    assert.equal(v.stderr, '', `${what}: vdisk failed`);
    assert.equal(v.stdout, q.stdout, what);
    assert.equal(v.code, 0, what);
    return;
  }
  const theirs = q.stderr.split('\n')[0]!.replace(/^qemu-img: /, '');
  assert.equal(v.code, 1, `${what}: vdisk exited ${v.code} where qemu-img refused with "${theirs}"; stdout ${v.stdout}`);
  assert.equal(v.stdout, '', what);
  assert.match(v.stderr, /^vdisk measure: [^\n]+\n$/, `${what}: one line`);
  const ours = v.stderr.slice('vdisk measure: '.length, -1);
  assert.ok(ours.startsWith(theirs), `${what}:\n  vdisk:    ${ours}\n  qemu-img: ${theirs}`);
}

describe('vdisk measure against qemu-img measure', () => {
  let tmp: TmpDir;
  let nbd: Server | undefined;
  const p = (name: string) => tmp.path(name);
  /** Input images, as the arguments that name them. */
  const inputs: { name: string; args: string[] }[] = [];

  before(async () => {
    tmp = await makeTmpDir('vdisk-measure-');
    if (!haveTool('qemu-img') || !haveTool('qemu-io') || !haveTool('qemu-nbd')) return;
    const io = (format: string, file: string, commands: string[]) => runOk('qemu-io', ['-f', format, ...commands.flatMap((c) => ['-c', c]), file]);
    // Sparse raw: data at the start, written zeros (allocated, reading as zero), a small
    // unaligned piece straddling a cluster boundary, data at the very end.
    await makeSparseFile(p('sparse.raw'), SIZE, [
      { offset: 0, data: pattern(MiB, 1) }, { offset: 4 * MiB, data: new Uint8Array(MiB) },
      { offset: 10 * MiB - 1000, data: pattern(3000, 2) }, { offset: SIZE - 4 * KiB, data: pattern(4 * KiB, 3) },
    ]);
    // A raw image whose length is not a whole number of sectors.
    await makeSparseFile(p('odd.raw'), 1000, [{ offset: 0, data: pattern(1000, 4) }]);
    // qcow2: data, a data cluster of zeros, a zero cluster, an unaligned write.
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', p('plain.qcow2'), String(SIZE)]);
    await io('qcow2', p('plain.qcow2'), ['write -P 0x11 0 1M', 'write -P 0 4M 1M', 'write -z 6M 1M', `write -P 0x22 ${10 * MiB + 512} 3000`]);
    await runOk('qemu-img', ['convert', '-c', '-O', 'qcow2', p('plain.qcow2'), p('compressed.qcow2')]);
    // A chain: the top's zero cluster hides base data, its data lands beside and over the base's.
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', p('base.qcow2'), String(SIZE)]);
    await io('qcow2', p('base.qcow2'), ['write -P 0x44 0 2M', 'write -P 0x55 8M 1M', 'write -P 0x77 30M 64k']);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('top.qcow2')]);
    await io('qcow2', p('top.qcow2'), ['write -P 0x66 1M 512k', 'write -z 8M 64k', 'write -P 0x88 40M 100k']);
    // Persistent bitmaps of several granularities and name lengths.
    await runOk('qemu-img', ['convert', '-O', 'qcow2', p('plain.qcow2'), p('bitmaps.qcow2')]);
    await runOk('qemu-img', ['bitmap', '--add', p('bitmaps.qcow2'), 'b1']);
    await runOk('qemu-img', ['bitmap', '--add', '-g', '512', p('bitmaps.qcow2'), 'a-longer-bitmap-name']);
    await runOk('qemu-img', ['bitmap', '--add', '--disable', '-g', '2M', p('bitmaps.qcow2'), 'c']);
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', p('v2.qcow2'), String(SIZE)]);
    await io('qcow2', p('v2.qcow2'), ['write -P 0x99 3M 5M']);
    // Internal snapshots: the active image has more data than either snapshot.
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', p('snaps.qcow2'), String(SIZE)]);
    await io('qcow2', p('snaps.qcow2'), ['write -P 0x11 0 1M']);
    await runOk('qemu-img', ['snapshot', '-c', 'first', p('snaps.qcow2')]);
    await io('qcow2', p('snaps.qcow2'), ['write -P 0x12 2M 3M']);
    await runOk('qemu-img', ['snapshot', '-c', '2', p('snaps.qcow2')]);
    await io('qcow2', p('snaps.qcow2'), ['write -P 0x13 20M 7M']);
    // The same, grown and shrunk after the snapshots: QEMU measures a loaded snapshot over the
    // active image's length, not the length the snapshot was taken at.
    await copyFile(p('snaps.qcow2'), p('grown.qcow2'));
    await runOk('qemu-img', ['resize', '-q', p('grown.qcow2'), '200M']);
    await io('qcow2', p('grown.qcow2'), ['write -P 0x14 150M 1M']);
    await copyFile(p('snaps.qcow2'), p('shrunk.qcow2'));
    await runOk('qemu-img', ['resize', '-q', '--shrink', p('shrunk.qcow2'), '3M']);
    nbd = await qemuNbd(p('nbd.sock'), p('top.qcow2'), ['-r', '-f', 'qcow2']);

    inputs.push(
      ...['sparse.raw', 'odd.raw', 'plain.qcow2', 'compressed.qcow2', 'top.qcow2', 'bitmaps.qcow2', 'v2.qcow2', 'snaps.qcow2']
        .map((file) => ({ name: file, args: [p(file)] })),
      { name: 'qcow2 read as raw bytes', args: ['-f', 'raw', p('plain.qcow2')] },
      { name: '--image-opts', args: ['--image-opts', `driver=qcow2,file.filename=${p('top.qcow2')}`] },
      { name: 'nbd:// from qemu-nbd', args: [nbd.uri] },
    );
    await mkdir(p('variants'));
    for (const variant of QCOW2_VARIANTS) inputs.push({ name: variant.name, args: [(await buildVariant(p('variants'), variant)).path] });
  });
  after(async () => {
    await nbd?.stop();
    await tmp.cleanup();
  });

  it('measures bare sizes as qemu-img does, for raw and every qcow2 option that changes a size', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const sizes = ['0', '1', '512', '513', '65535', '65537', '1G', '1T', '16T', '1P', '2E', '9223372036854775807'];
    const targets = [
      ['-O', 'raw'], ['-O', 'raw', '-o', 'preallocation=full'], ['-O', 'qcow2'],
      ...[
        'cluster_size=512', 'cluster_size=4k', 'cluster_size=2M', 'refcount_bits=1', 'refcount_bits=64,cluster_size=512', 'refcount_bits=8',
        'extended_l2=on', 'extended_l2=on,cluster_size=2M', 'preallocation=metadata', 'preallocation=falloc', 'preallocation=full,cluster_size=2M',
        'compat=0.10', 'compat=0.10,extended_l2=on', 'backing_file=base.qcow2,backing_fmt=qcow2',
        // Options measure accepts and ignores, as qemu-img does.
        'lazy_refcounts=on,compression_type=zstd,data_file=x,data_file_raw=on,nocow=on,extent_size_hint=1M',
      ].map((o) => ['-O', 'qcow2', '-o', o]),
    ];
    for (const size of sizes) {
      for (const target of targets) await same(['--output=json', ...target, '--size', size]);
      await same(['-O', 'qcow2', '--size', size]);
      await same(['--size', size]);
    }
  });

  it('measures input images as qemu-img does: sparse raw, qcow2 with zero and compressed clusters, chains, bitmaps, nbd, the qcow2 matrix', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io', 'qemu-nbd')) return;
    const targets = [
      ['-O', 'qcow2'], ['-O', 'raw'], ['-O', 'qcow2', '-o', 'cluster_size=2M'], ['-O', 'qcow2', '-o', 'cluster_size=512,refcount_bits=1'],
      ['-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=16k'], ['-O', 'qcow2', '-o', 'compat=0.10'],
      ['-O', 'qcow2', '-o', 'preallocation=falloc'], ['-O', 'qcow2', '-o', 'backing_file=other.qcow2'],
      // The size given with -o only meets QEMU's size check; the input's size is measured.
      ['-O', 'qcow2', '-o', 'size=1T'],
    ];
    assert.ok(inputs.length > 30, 'the inputs were built');
    for (const input of inputs) {
      for (const target of targets) await same(['--output=json', ...target, ...input.args]);
      await same(['-O', 'qcow2', ...input.args]);
      await same(input.args);
    }
  });

  it('measures internal snapshots with -l, by id, name, or snapshot.id/snapshot.name', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    for (const l of ['first', '1', '2', 'snapshot.id=1', 'snapshot.name=first', 'snapshot.id=2,snapshot.name=2', 'snapshot.id=1,snapshot.name=2', 'none']) {
      await same(['--output=json', '-O', 'qcow2', '-l', l, p('snaps.qcow2')]);
    }
    for (const file of ['grown.qcow2', 'shrunk.qcow2']) {
      for (const l of ['first', '2']) for (const target of ['raw', 'qcow2']) await same(['--output=json', '-O', target, '-l', l, p(file)]);
    }
    await same(['-O', 'raw', '-l', 'first', p('snaps.qcow2')]);
    await same(['-l', 'first', p('sparse.raw')]);
    await same(['-l', 'first', '-f', 'raw', p('snaps.qcow2')]);
    await same(['-l', 'snapshot.other=1', p('snaps.qcow2')]);
  });

  it("refuses bad command lines and options with qemu-img's words, on one line", async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const cases: string[][] = [
      [], ['--size', '1G', p('plain.qcow2')], ['-f', 'qcow2'], ['-l', 'snap'], ['--image-opts'], [p('plain.qcow2'), p('top.qcow2')],
      ['--size', 'x'], ['--size', '-1'], ['--size', '9E'], ['--size', '1G', '--output=xml'],
      ['--size', '1G', '-O', 'foo'], ['--size', '1G', '-O', 'vmdk'],
      ...[
        'foo=bar', 'help', 'compat=v3', 'compat=', 'cluster_size=1000', 'cluster_size=x', 'cluster_size=', 'cluster_size', 'cluster_size=16E',
        'cluster_size=4k,,x', 'cluster_size=0', 'cluster_size=4G', 'cluster_size=1.5k', 'refcount_bits=3', 'refcount_bits=x', 'refcount_bits=0',
        'refcount_bits=-1', 'refcount_bits=128', 'refcount_bits=0x', 'refcount_bits=99999999999999999999999', 'refcount_bits=8,compat=0.10',
        'preallocation=x', 'preallocation=', 'preallocation=full,,x', 'extended_l2=x', 'extended_l2=ON', 'extended_l2=on,cluster_size=4k',
        'lazy_refcounts=x', 'nocow=x', 'nocow', 'extent_size_hint=x', 'size=x', '=1', 'cluster_size=64k,', ',cluster_size=64k',
      ].map((o) => ['--size', '1G', '-O', 'qcow2', '-o', o]),
      ['--size', '1G', '-O', 'raw', '-o', 'cluster_size=64k'],
      ['-O', 'qcow2', '-o', 'size=1P,cluster_size=512', p('plain.qcow2')],
      ['--size', '16T', '-O', 'qcow2', '-o', 'cluster_size=512'],
    ];
    for (const args of cases) await same(args);
  });

  it('refuses, as qemu-img does, an input whose bitmap directory QEMU would not load', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    await copyFile(p('bitmaps.qcow2'), p('bad-bitmaps.qcow2'));
    // The first directory entry's type byte: 1 is the only bitmap type there is.
    const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', p('bad-bitmaps.qcow2')])) as { 'format-specific': { data: { bitmaps: unknown[] } } };
    assert.equal(info['format-specific'].data.bitmaps.length, 3);
    const file = await open(p('bad-bitmaps.qcow2'), 'r+');
    try {
      const head = Buffer.alloc(64 * KiB);
      await file.read(head, 0, head.length, 0);
      let at = head.readUInt32BE(100);
      for (let type = head.readUInt32BE(at); type !== 0; at += 8 + Math.ceil(head.readUInt32BE(at + 4) / 8) * 8, type = head.readUInt32BE(at)) {
        if (type === 0x23852875) await file.write(Buffer.from([2]), 0, 1, Number(head.readBigUInt64BE(at + 8 + 16)) + 16);
      }
    } finally {
      await file.close();
    }
    const q = await run('qemu-img', ['measure', '-O', 'qcow2', p('bad-bitmaps.qcow2')]);
    assert.match(q.stderr, /doesn't satisfy the constraints/);
    const v = await vdisk(['measure', '-O', 'qcow2', p('bad-bitmaps.qcow2')]);
    assert.equal(v.code, 1);
    assert.equal(v.stdout, '');
    assert.match(v.stderr, /^vdisk measure: qcow2 image '.*bad-bitmaps\.qcow2' has unusable bitmaps: entry 0 is invalid\n$/);
  });

  it('accepts what qemu-img accepts in -o: flags, no-flags, spellings, repeated keys, escaped commas', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const lists = [
      ['extended_l2'], ['noextended_l2'], ['nonocow'], ['lazy_refcounts'], ['extended_l2=yes'], ['extended_l2=y'], ['extended_l2=true'],
      ['refcount_bits=0x10'], ['refcount_bits=020'], ['refcount_bits=+8'], ['refcount_bits= 16'], ['cluster_size=0x1000'],
      ['cluster_size= 64k'], ['cluster_size=64K'], ['cluster_size=64k', 'cluster_size=2M'], ['cluster_size=64k,cluster_size=512'],
      ['id=anything'], ['backing_file=a,,b'], ['preallocation=metadata,compat=1.1'], ['size=5G'],
    ];
    for (const list of lists) {
      await same(['--output=json', '-O', 'qcow2', ...list.flatMap((o) => ['-o', o]), '--size', '1G']);
    }
    await same(['--output=json', '-O', 'raw', '-o', 'preallocation=bad', '--size', '1G']);
  });
});
