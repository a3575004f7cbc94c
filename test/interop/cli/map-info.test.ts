import assert from 'node:assert/strict';
import { open as fsOpen, readFile, stat, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { native } from '../../../src/native/index.js';
import { vdisk } from '../../helpers/cli.js';
import { needNative } from '../../helpers/native.js';
import { needTools, run, runOk } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A sparse file laid out by `parts`: data written, zeros written as data, fallocated ranges, holes. */
async function makeSparse(path: string, size: number, parts: { at: number; len: number; kind: 'data' | 'zeros' | 'falloc' }[]): Promise<void> {
  const fh = await fsOpen(path, 'w');
  try {
    await fh.truncate(size);
    for (const p of parts) {
      if (p.kind === 'falloc') await native!.fallocate(fh.fd, 0, p.at, p.len);
      else await fh.write(Buffer.alloc(p.len, p.kind === 'data' ? 0x5a : 0), 0, p.len, p.at);
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

const LAYOUTS: Record<string, { size: number; parts: { at: number; len: number; kind: 'data' | 'zeros' | 'falloc' }[] }> = {
  'empty file': { size: 0, parts: [] },
  'all hole': { size: 8 * MiB, parts: [] },
  'data, holes and allocated zeros': {
    size: 16 * MiB,
    parts: [
      { at: 0, len: 4 * KiB, kind: 'data' },
      { at: 64 * KiB, len: 192 * KiB, kind: 'data' },
      { at: 1 * MiB, len: 1 * MiB, kind: 'falloc' },
      { at: 3 * MiB, len: 64 * KiB, kind: 'zeros' },
      { at: 5 * MiB, len: 12 * KiB, kind: 'data' },
      { at: 5 * MiB + 12 * KiB, len: 4 * KiB, kind: 'falloc' },
      { at: 16 * MiB - 4 * KiB, len: 4 * KiB, kind: 'data' },
    ],
  },
  'unaligned size with data in the tail': { size: 3 * MiB + 1000, parts: [{ at: 3 * MiB, len: 1000, kind: 'data' }] },
  'all data': { size: 256 * KiB, parts: [{ at: 0, len: 256 * KiB, kind: 'data' }] },
};

describe('vdisk map and info against qemu-img, raw', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir()));
  after(async () => tmp.cleanup());

  for (const [name, layout] of Object.entries(LAYOUTS)) {
    it(`map and info agree on: ${name}`, async (t) => {
      if (!needTools(t, 'qemu-img') || !needNative(t)) return;
      const f = tmp.path(name.replace(/\W+/g, '-') + '.raw');
      await makeSparse(f, layout.size, layout.parts);
      for (const output of ['json', 'human']) {
        const theirs = await runOk('qemu-img', ['map', `--output=${output}`, '-f', 'raw', f]);
        const ours = await vdisk(['map', `--output=${output}`, '-f', 'raw', f]);
        assert.equal(ours.stderr, '');
        assert.equal(ours.code, 0);
        assert.equal(ours.stdout, theirs, `map --output=${output}`);
      }
      const infoTheirs = JSON.parse(await runOk('qemu-img', ['info', '--output=json', '-f', 'raw', f]));
      const infoOurs = await vdisk(['info', '--output=json', '-f', 'raw', f]);
      assert.deepEqual(JSON.parse(infoOurs.stdout), infoTheirs);
      assert.equal((await vdisk(['info', '-f', 'raw', f])).stdout, await runOk('qemu-img', ['info', '-f', 'raw', f]));
    });
  }

  it('map --start-offset and --max-length cut the walk as qemu-img does', async (t) => {
    if (!needTools(t, 'qemu-img') || !needNative(t)) return;
    const f = tmp.path('window.raw');
    await makeSparse(f, LAYOUTS['data, holes and allocated zeros']!.size, LAYOUTS['data, holes and allocated zeros']!.parts);
    for (const [s, l] of [['70k', '1M'], ['0', '5000'], ['5M', '1'], ['1048576', '3145728']] as const) {
      const args = ['map', '--output=json', '-f', 'raw', `--start-offset=${s}`, `--max-length=${l}`, f];
      assert.equal((await vdisk(args)).stdout, await runOk('qemu-img', args), `window ${s}+${l}`);
    }
  });

  it('create makes the same file as qemu-img create, for each preallocation mode', async (t) => {
    if (!needTools(t, 'qemu-img') || !needNative(t)) return;
    for (const [size, prealloc] of [['100', 'off'], ['1M', 'off'], ['1000', 'full'], ['3M', 'falloc'], ['2M', 'full'], ['0', 'off']] as const) {
      const mine = tmp.path(`mine-${size}-${prealloc}.raw`);
      const theirsPath = tmp.path(`theirs-${size}-${prealloc}.raw`);
      const ours = await vdisk(['create', '-f', 'raw', '-o', `preallocation=${prealloc}`, mine, size]);
      const theirs = await runOk('qemu-img', ['create', '-f', 'raw', '-o', `preallocation=${prealloc}`, theirsPath, size]);
      assert.equal(ours.code, 0, ours.stderr);
      assert.equal(ours.stdout.replace(mine, 'X'), theirs.replace(theirsPath, 'X'));
      const [a, b] = [await stat(mine), await stat(theirsPath)];
      assert.equal(a.size, b.size, `size for ${size} ${prealloc}`);
      assert.equal(a.blocks, b.blocks, `allocation for ${size} ${prealloc}`);
      assert.deepEqual(await readFile(mine), await readFile(theirsPath));
      const mapArgs = (p: string) => ['map', '--output=json', '-f', 'raw', p];
      assert.equal((await vdisk(mapArgs(mine))).stdout, await runOk('qemu-img', mapArgs(theirsPath)));
    }
  });

  it('create over an existing file truncates it, as qemu-img does', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const f = tmp.path('existing.raw');
    await writeFile(f, Buffer.alloc(8 * KiB, 0x77));
    assert.equal((await vdisk(['create', '-q', '-f', 'raw', f, '4k'])).code, 0);
    assert.deepEqual(await readFile(f), Buffer.alloc(4 * KiB));
  });
});

describe('bad input to info, map and create: one line, exit 1, nothing touched', () => {
  let tmp: TmpDir;
  before(async () => (tmp = await makeTmpDir()));
  after(async () => tmp.cleanup());

  it('each is refused with one clear line', async () => {
    const f = tmp.path('keep.raw');
    await writeFile(f, Buffer.alloc(64 * KiB, 0x42));
    const before = await stat(f);
    const cases: [string[], RegExp][] = [
      [['info', tmp.path('missing.raw')], /Could not open '.*missing\.raw': No such file or directory/],
      [['map', tmp.path('missing.raw')], /No such file or directory/],
      [['info', '-f', 'nosuchformat', f], /Unknown driver 'nosuchformat'/],
      [['info', '--output=xml', f], /--output must be used with human or json/],
      [['info', '--frobnicate', f], /unrecognized option '--frobnicate'/],
      [['info'], /Expecting one image file name/],
      [['map', '--start-offset=12q', f], /Invalid offset specified: '12q'/],
      [['map', '--start-offset=1G', f], /past the end of the image/],
      [['create', '-f', 'raw', tmp.path('neg.raw'), '--', '-5'], /Invalid image size specified '-5'/],
      [['create', '-f', 'raw', tmp.path('bad.raw'), '12x'], /Invalid image size specified '12x'/],
      [['create', '-f', 'nosuchformat', tmp.path('bad.raw'), '1M'], /Unknown file format 'nosuchformat'/],
      [['create', '-f', 'raw', '-o', 'cluster_size=64k', tmp.path('bad.raw'), '1M'], /Invalid parameter 'cluster_size'/],
      [['create', '-f', 'raw', '-o', 'preallocation=lots', tmp.path('bad.raw'), '1M'], /invalid parameter value: preallocation=lots/],
      [['create', '-f', 'raw', tmp.path('bad.raw')], /needs a size/],
      [['info', `json:{"driver":"raw","file":{"driver":"file","filename":"${f}"},"bogus":1}`], /does not support the option 'bogus'/],
      [['info', 'json:{"driver":'], /Could not parse the json: filename/],
      [['nosuchcommand'], /unknown command 'nosuchcommand'/],
    ];
    for (const [args, message] of cases) {
      const r = await vdisk(args);
      assert.equal(r.code, 1, `exit status of vdisk ${args.join(' ')}`);
      const lines = r.stderr.split('\n').filter(Boolean);
      assert.equal(lines.length, 1, `one line from vdisk ${args.join(' ')}: ${r.stderr}`);
      assert.match(lines[0]!, message);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    }
    const afterStat = await stat(f);
    assert.equal(afterStat.mtimeMs, before.mtimeMs);
    assert.deepEqual(await readFile(f), Buffer.alloc(64 * KiB, 0x42));
    // The refused creates made no files.
    for (const name of ['neg.raw', 'bad.raw']) {
      assert.equal((await run('test', ['-e', tmp.path(name)])).code, 1, `${name} must not exist`);
    }
  });
});
