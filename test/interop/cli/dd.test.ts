import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { vdisk } from '../../helpers/cli.js';
import { needTools, run, runOk } from '../../helpers/oracles.js';
import { makeSparseFile, makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * vdisk dd against qemu-img dd 7.2, same arguments: the outputs hold the same bytes (raw outputs
 * byte for byte, file size included; qcow2 outputs by qemu-img compare and virtual size), and bad
 * arguments fail with the same message and exit status.
 */
describe('vdisk dd against qemu-img dd', () => {
  let tmp: TmpDir;
  before(async () => {
    tmp = await makeTmpDir('vdisk-dd-');
    // A raw input whose size is not a multiple of 512 (QEMU reads it as whole sectors), with a hole.
    await makeSparseFile(tmp.path('in.raw'), 3 * MiB + 1000, [{ offset: 0, data: pattern(700 * KiB, 1) }, { offset: 2 * MiB, data: pattern(MiB + 1000, 2) }]);
    await writeFile(tmp.path('small.raw'), pattern(5000, 3));
  });
  after(() => tmp.cleanup());

  async function ddBoth(name: string, args: string[], format: 'raw' | 'qcow2'): Promise<void> {
    const ours = tmp.path(`v-${name}`);
    const theirs = tmp.path(`q-${name}`);
    const fill = (of: string) => args.map((a) => a.replace('OUT', of).replace(/IN:(\S+)/, (_, f: string) => tmp.path(f)));
    const q = await run('qemu-img', ['dd', ...fill(theirs)]);
    const v = await vdisk(['dd', ...fill(ours)]);
    assert.equal(v.code, q.code, `${name}: exit ${v.code}, qemu-img ${q.code}: ${v.stderr}`);
    assert.equal(v.stderr.replaceAll('vdisk dd: ', ''), q.stderr.replaceAll('qemu-img: ', ''), `${name}: stderr`);
    assert.equal(v.stdout, q.stdout);
    if (format === 'raw') {
      assertBytesEqual(await readFile(ours), await readFile(theirs), name);
    } else {
      const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', theirs, ours]);
      assert.equal(cmp.stdout, 'Images are identical.\n', `${name}: ${cmp.stdout}${cmp.stderr}`);
      const size = async (f: string) => (JSON.parse(await runOk('qemu-img', ['info', '--output=json', f])) as { 'virtual-size': number })['virtual-size'];
      assert.equal(await size(ours), await size(theirs), `${name}: virtual size`);
      assert.equal((await run('qemu-img', ['check', ours])).code, 0, `${name}: qemu-img check`);
    }
  }

  const CASES: [string, string[], 'raw' | 'qcow2'][] = [
    ['whole.raw', ['if=IN:in.raw', 'of=OUT'], 'raw'],
    ['bs-count-skip.raw', ['bs=64k', 'count=40', 'skip=3', 'if=IN:in.raw', 'of=OUT'], 'raw'],
    ['odd-bs.raw', ['bs=1000', 'count=3', 'skip=1', 'if=IN:small.raw', 'of=OUT'], 'raw'],
    ['count-past-end.raw', ['bs=1k', 'count=100', 'if=IN:small.raw', 'of=OUT'], 'raw'],
    ['count-zero.raw', ['count=0', 'if=IN:small.raw', 'of=OUT'], 'raw'],
    ['skip-to-end.raw', ['bs=1k', 'skip=5', 'if=IN:small.raw', 'of=OUT'], 'raw'],
    ['skip-past-end.raw', ['skip=100', 'if=IN:small.raw', 'of=OUT'], 'raw'],
    ['count-within-skip.raw', ['bs=1k', 'count=1', 'skip=2', 'if=IN:small.raw', 'of=OUT'], 'raw'],
    ['suffixes.raw', ['bs=1.5k', 'count=0x3', 'if=IN:small.raw', 'of=OUT'], 'raw'],
    ['to.qcow2', ['-O', 'qcow2', 'bs=1M', 'skip=1', 'if=IN:in.raw', 'of=OUT'], 'qcow2'],
    ['from-qcow2.raw', ['-f', 'qcow2', 'bs=4k', 'count=300', 'skip=7', 'if=IN:in.qcow2', 'of=OUT'], 'raw'],
  ];

  for (const [name, args, format] of CASES) {
    it(`${args.filter((a) => !a.startsWith('if=') && !a.startsWith('of=')).join(' ') || 'defaults'} (${name})`, async (t) => {
      if (!needTools(t, 'qemu-img')) return;
      if (name.startsWith('from-qcow2')) await runOk('qemu-img', ['convert', '-O', 'qcow2', tmp.path('in.raw'), tmp.path('in.qcow2')]);
      await ddBoth(name, args, format);
    });
  }

  it('keeps the holes of the input, where qemu-img dd writes them out', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    assert.equal((await vdisk(['dd', `if=${tmp.path('in.raw')}`, `of=${tmp.path('sparse-out.raw')}`])).code, 0);
    const used = (await stat(tmp.path('sparse-out.raw'))).blocks * 512;
    assert.ok(used < 2 * MiB, `the 1.3 MiB hole stays a hole (${used} bytes allocated)`);
  });

  it('overwrites an existing output, as qemu-img dd does', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    for (const tool of ['q', 'v']) await writeFile(tmp.path(`${tool}-existing.raw`), pattern(2 * MiB, 9));
    await ddBoth('existing.raw', ['bs=4k', 'count=1', 'if=IN:small.raw', 'of=OUT'], 'raw');
  });

  it('fails on bad arguments as qemu-img dd does', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const bad: string[][] = [
      ['if=IN:small.raw'], ['if=IN:small.raw', 'of=OUT', 'foo=1'], ['if=IN:small.raw', 'of=OUT', 'foo'],
      ['if=IN:small.raw', 'of=OUT', 'bs=0'], ['if=IN:small.raw', 'of=OUT', 'bs=3G'], ['if=IN:small.raw', 'of=OUT', 'bs=1x'],
      ['if=IN:small.raw', 'of=OUT', 'count=-1'], ['if=IN:small.raw', 'of=OUT', 'skip=9223372036854775808'],
      ['-O', 'nosuch', 'if=IN:small.raw', 'of=OUT'], ['if=IN:missing.raw', 'of=OUT'],
    ];
    for (const [i, args] of bad.entries()) {
      const q = await run('qemu-img', ['dd', ...args.map((a) => a.replace('OUT', tmp.path(`bad-q${i}`)).replace(/IN:(\S+)/, (_, f: string) => tmp.path(f)))]);
      const v = await vdisk(['dd', ...args.map((a) => a.replace('OUT', tmp.path(`bad-v${i}`)).replace(/IN:(\S+)/, (_, f: string) => tmp.path(f)))]);
      assert.equal(v.code, q.code, args.join(' '));
      // qemu-img prints the suffix hint on two lines; vdisk keeps every error to one.
      const qemuWords = q.stderr.replaceAll('qemu-img: ', '').replace('suffixes for\nkilobytes', 'suffixes for kilobytes')
        // QEMU names the file twice for a missing input ("Could not open 'x': Could not open 'x': …").
        .replace(/^(Could not open '[^']*': )\1/, '$1');
      assert.equal(v.stderr.replaceAll('vdisk dd: ', ''), qemuWords, args.join(' '));
      await assert.rejects(stat(tmp.path(`bad-v${i}`)), { code: 'ENOENT' }, `${args.join(' ')} created no output`);
    }
  });

  it('refuses an output that is its input, leaving it intact (qemu-img dd truncates it)', async () => {
    const data = pattern(8 * KiB, 4);
    await writeFile(tmp.path('self.raw'), data);
    const r = await vdisk(['dd', `if=${tmp.path('self.raw')}`, `of=${tmp.path('self.raw')}`]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^vdisk dd: Failed to get "write" lock; is another process using the image \[.*\]\?\n$/);
    assertBytesEqual(await readFile(tmp.path('self.raw')), data, 'input');
  });
});
