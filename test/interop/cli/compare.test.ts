import assert from 'node:assert/strict';
import { copyFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { pattern } from '../../helpers/bytes.js';
import { vdisk } from '../../helpers/cli.js';
import { haveTool, needTools, run, runOk } from '../../helpers/oracles.js';
import { makeSparseFile, makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 64 * MiB;

/**
 * vdisk compare and qemu-img compare on the same pairs: the same exit status and the same
 * output, mismatch offsets included.
 */
describe('vdisk compare against qemu-img compare', () => {
  let tmp: TmpDir;
  const p = (name: string) => tmp.path(name);

  before(async () => {
    tmp = await makeTmpDir('vdisk-compare-');
    if (!haveTool('qemu-img') || !haveTool('qemu-io')) return;
    await makeSparseFile(p('a.raw'), SIZE, [
      { offset: 0, data: pattern(MiB, 1) }, { offset: 4 * MiB, data: new Uint8Array(MiB) }, { offset: 5 * MiB, data: pattern(MiB, 2) },
    ]);
    await runOk('qemu-img', ['convert', '-O', 'qcow2', p('a.raw'), p('a.qcow2')]);
    await runOk('qemu-img', ['convert', '-O', 'raw', p('a.raw'), p('a2.raw')]);
    // One byte changed inside a data cluster, off any sector boundary.
    await copyFile(p('a.qcow2'), p('byte.qcow2'));
    await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a ${5 * MiB + 1234} 1`, p('byte.qcow2')]);
    // Data where the other image has nothing allocated.
    await copyFile(p('a.qcow2'), p('extra.qcow2'));
    await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5b ${40 * MiB + 700} 10`, p('extra.qcow2')]);
    // Longer images: with a zero tail, and with data in the tail.
    await copyFile(p('a.qcow2'), p('long.qcow2'));
    await runOk('qemu-img', ['resize', '-q', p('long.qcow2'), '80M']);
    await copyFile(p('long.qcow2'), p('longdata.qcow2'));
    await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5c ${70 * MiB + 100} 3`, p('longdata.qcow2')]);
    // A zero tail that is allocated: written zeros, which must be read to be known.
    await copyFile(p('long.qcow2'), p('longzeros.qcow2'));
    await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -P 0 ${66 * MiB} 1M`, p('longzeros.qcow2')]);
  });
  after(async () => tmp.cleanup());

  const CASES: { name: string; args: (string | { file: string })[] }[] = [
    { name: 'identical across formats', args: ['-f', 'raw', '-F', 'qcow2', { file: 'a.raw' }, { file: 'a.qcow2' }] },
    { name: 'identical, probed formats', args: [{ file: 'a.qcow2' }, { file: 'a.raw' }] },
    { name: 'identical, strict, same layout', args: ['-s', { file: 'a.raw' }, { file: 'a2.raw' }] },
    { name: 'strict: block status differs', args: ['-s', '-f', 'raw', '-F', 'qcow2', { file: 'a.raw' }, { file: 'a.qcow2' }] },
    { name: 'one byte differs', args: [{ file: 'a.qcow2' }, { file: 'byte.qcow2' }] },
    { name: 'one byte differs, raw first', args: [{ file: 'a.raw' }, { file: 'byte.qcow2' }] },
    { name: 'data where the other has none', args: [{ file: 'extra.qcow2' }, { file: 'a.raw' }] },
    { name: 'longer, zero tail', args: [{ file: 'a.qcow2' }, { file: 'long.qcow2' }] },
    { name: 'longer first, zero tail', args: [{ file: 'long.qcow2' }, { file: 'a.raw' }] },
    { name: 'longer, written zeros in the tail', args: [{ file: 'a.raw' }, { file: 'longzeros.qcow2' }] },
    { name: 'longer, strict', args: ['-s', { file: 'a.qcow2' }, { file: 'long.qcow2' }] },
    { name: 'longer, data in the tail', args: [{ file: 'a.qcow2' }, { file: 'longdata.qcow2' }] },
    { name: 'longer first, data in the tail', args: [{ file: 'longdata.qcow2' }, { file: 'a.qcow2' }] },
    { name: 'quiet', args: ['-q', { file: 'a.qcow2' }, { file: 'byte.qcow2' }] },
    { name: 'missing image', args: [{ file: 'a.qcow2' }, { file: 'missing.qcow2' }] },
  ];

  for (const c of CASES) {
    it(c.name, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      const args = ['compare', ...c.args.map((a) => (typeof a === 'string' ? a : p(a.file)))];
      const theirs = await run('qemu-img', args);
      const ours = await vdisk(args);
      assert.equal(ours.code, theirs.code, `exit status: ${ours.stderr}`);
      assert.equal(ours.stdout, theirs.stdout);
      // Errors are one line each, in vdisk's own words.
      assert.equal(ours.stderr === '', theirs.stderr === '', ours.stderr);
    });
  }

  it('the cases cover every outcome', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const outcomes = new Set<string>();
    for (const c of CASES) {
      const r = await vdisk(['compare', ...c.args.map((a) => (typeof a === 'string' ? a : p(a.file)))]);
      outcomes.add(`${r.code} ${r.stdout.split('\n').map((l) => l.replace(/\d+/g, 'N')).join('|')}`);
    }
    assert.deepEqual([...outcomes].sort(), [
      '0 Images are identical.|',
      '0 Warning: Image size mismatch!|Images are identical.|',
      '1 ',
      '1 Content mismatch at offset N!|',
      '1 Strict mode: Image size mismatch!|',
      '1 Strict mode: Offset N block status mismatch!|',
      '1 Warning: Image size mismatch!|Content mismatch at offset N!|',
      '2 ',
    ]);
  });
});
