/**
 * Zero writes of the nbd driver as real servers see them: noFallback and allocate travel as
 * NBD_CMD_FLAG_FAST_ZERO where the server advertises NBD_FLAG_SEND_FAST_ZERO (nbdkit's log
 * filter shows each request's flags), fail with ENOTSUP before anything is sent where it does
 * not, and pass the server's own ENOTSUP on with the export untouched; qemu-nbd turns them
 * into fallocate on its file, as QEMU's block layer does.
 */
import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import type { ZeroOptions } from '../../../../src/core/types.js';
import { open } from '../../../../src/registry/index.js';
import { assertBytesEqual, pattern } from '../../../helpers/bytes.js';
import { mountLoopFs } from '../../../helpers/loop-fs.js';
import { needTools } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { nbdkit, qemuNbd, withServer } from './servers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** The Zero requests nbdkit's log filter recorded, with their flags. */
async function zeroRequests(log: string): Promise<Record<string, string>[]> {
  const text = await readFile(log, 'utf8');
  return text.split('\n').filter((l) => /\bZero id=/.test(l) && !/\.\.\./.test(l.split('Zero')[0]!)).map((l) => {
    const fields: Record<string, string> = {};
    for (const m of l.matchAll(/(\w+)=(\S+)/g)) fields[m[1]!] = m[2]!;
    return fields;
  });
}

describe('nbd zero writes: FAST_ZERO, NO_HOLE and what servers answer', () => {
  let tmp: TmpDir;
  let n = 0;
  const sock = () => tmp.path(`s${++n}.sock`);
  before(async () => (tmp = await makeTmpDir('vdisk-nbd-zero-')));
  after(async () => tmp.cleanup());

  it('noFallback and allocate go out as FAST_ZERO; allocate also as NO_HOLE (no trim)', async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    const log = tmp.path('zero.log');
    await withServer(nbdkit(sock(), ['--filter=log', 'memory', '1M', `logfile=${log}`]), async (s) => {
      const node = await open({ driver: 'nbd', filename: s.uri });
      try {
        assert.equal(node.caps.fastZero, true);
        await node.write(0, pattern(MiB, 3));
        const cases: [ZeroOptions, { fast: string; mayTrim: string }][] = [
          [{}, { fast: '0', mayTrim: '0' }],
          [{ mayUnmap: true }, { fast: '0', mayTrim: '1' }],
          [{ noFallback: true }, { fast: '1', mayTrim: '0' }],
          [{ noFallback: true, mayUnmap: true }, { fast: '1', mayTrim: '1' }],
          [{ allocate: true }, { fast: '1', mayTrim: '0' }],
          [{ allocate: true, mayUnmap: true }, { fast: '1', mayTrim: '0' }],
        ];
        for (const [i, [opts]] of cases.entries()) await node.writeZeroes(i * 64 * KiB, 64 * KiB, opts);
        await node.flush();
        const want = pattern(MiB, 3).fill(0, 0, cases.length * 64 * KiB);
        const back = new Uint8Array(MiB);
        await node.read(0, back);
        assertBytesEqual(back, want, 'zeroed ranges');
      } finally {
        await node.close();
      }
      const seen = await zeroRequests(log);
      assert.equal(seen.length, 6, `Zero requests logged: ${JSON.stringify(seen)}`);
      const expected = [['0', '0'], ['0', '1'], ['1', '0'], ['1', '1'], ['1', '0'], ['1', '0']];
      for (const [i, [fast, trim]] of expected.entries()) {
        assert.equal(Number(seen[i]!.offset), i * 64 * KiB);
        assert.equal(seen[i]!.fast, fast, `request ${i}: ${JSON.stringify(seen[i])}`);
        assert.equal(seen[i]!.trim, trim, `request ${i}: ${JSON.stringify(seen[i])}`);
      }
    });
  });

  it('a server without FAST_ZERO: noFallback and allocate fail with ENOTSUP and send nothing; plain zeroes still go', async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    const log = tmp.path('nofast.log');
    await withServer(nbdkit(sock(), ['--filter=log', '--filter=nozero', 'memory', '1M', 'zeromode=plugin', 'fastzeromode=none', `logfile=${log}`]), async (s) => {
      const node = await open({ driver: 'nbd', filename: s.uri });
      try {
        assert.equal(node.caps.zero, 'native');
        assert.equal(node.caps.fastZero, false);
        await node.write(0, pattern(MiB, 4));
        for (const opts of [{ noFallback: true }, { allocate: true }, { noFallback: true, mayUnmap: true }]) {
          await assert.rejects(node.writeZeroes(0, 64 * KiB, opts), { code: 'ENOTSUP' }, JSON.stringify(opts));
        }
        assert.equal((await zeroRequests(log)).length, 0, 'nothing was sent');
        await node.writeZeroes(0, 64 * KiB);
        const back = new Uint8Array(MiB);
        await node.read(0, back);
        assertBytesEqual(back, pattern(MiB, 4).fill(0, 0, 64 * KiB), 'only the plain zero write zeroed');
      } finally {
        await node.close();
      }
    });
  });

  it('a server that advertises FAST_ZERO but cannot: its ENOTSUP comes back and the export is untouched', async (t) => {
    if (!needTools(t, 'nbdkit')) return;
    await withServer(nbdkit(sock(), ['--filter=nozero', 'memory', '1M', 'zeromode=emulate', 'fastzeromode=slow']), async (s) => {
      const node = await open({ driver: 'nbd', filename: s.uri });
      try {
        assert.equal(node.caps.fastZero, true);
        await node.write(0, pattern(MiB, 5));
        await assert.rejects(node.writeZeroes(4096, 8192, { noFallback: true }), { code: 'ENOTSUP' });
        await assert.rejects(node.writeZeroes(4096, 8192, { allocate: true }), { code: 'ENOTSUP' });
        const back = new Uint8Array(MiB);
        await node.read(0, back);
        assertBytesEqual(back, pattern(MiB, 5), 'refused fast zeroes changed nothing');
        // Without noFallback the server zeroes its slow way.
        await node.writeZeroes(4096, 8192);
        await node.read(0, back);
        assertBytesEqual(back, pattern(MiB, 5).fill(0, 4096, 12288), 'plain zero write');
      } finally {
        await node.close();
      }
    });
  });

  it('qemu-nbd: allocate reserves the range in its file, mayUnmap punches it, noFallback zeroes it', async (t) => {
    if (!needTools(t, 'qemu-nbd')) return;
    const file = tmp.path('export.raw');
    await writeFile(file, pattern(4 * MiB, 6));
    await withServer(qemuNbd(sock(), file, ['-f', 'raw', '--discard=unmap']), async (s) => {
      const node = await open({ driver: 'nbd', filename: s.uri });
      try {
        assert.equal(node.caps.fastZero, true);
        await node.writeZeroes(0, MiB, { mayUnmap: true });
        await node.flush();
        const punched = (await stat(file)).blocks * 512;
        assert.ok(punched <= 3 * MiB, `a hole after mayUnmap: ${punched} bytes allocated`);
        await node.writeZeroes(0, 512 * KiB, { allocate: true });
        await node.writeZeroes(2 * MiB, 512 * KiB, { noFallback: true });
        await node.flush();
        const after = (await stat(file)).blocks * 512;
        assert.ok(after >= punched + 512 * KiB, `allocate reserved the hole: ${punched} -> ${after}`);
      } finally {
        await node.close();
      }
    });
    const want = pattern(4 * MiB, 6).fill(0, 0, MiB).fill(0, 2 * MiB, 2 * MiB + 512 * KiB);
    assertBytesEqual(new Uint8Array(await readFile(file)), want, 'the export file');
  });

  // QEMU 7.2's file-posix punches the range and then finds it cannot allocate it again, so its
  // refusal leaves the range reading zeros (vdisk's file driver tries allocation first and
  // leaves it intact; see zero-range.test.ts). Only the refusal and the rest of the file are QEMU's promise.
  it('qemu-nbd over a file system that cannot zero fast (ext2): ENOTSUP, the rest of the file untouched', async (t) => {
    if (!needTools(t, 'qemu-nbd')) return;
    const fs = await mountLoopFs(t, 'mkfs.ext2', ['-q', '-F'], 32 * MiB);
    if (!fs) return;
    const file = `${fs.dir}/export.raw`;
    await writeFile(file, pattern(2 * MiB, 8));
    await withServer(qemuNbd(sock(), file, ['-f', 'raw', '--cache=writeback']), async (s) => {
      const node = await open({ driver: 'nbd', filename: s.uri });
      try {
        await assert.rejects(node.writeZeroes(0, 256 * KiB, { noFallback: true }), { code: 'ENOTSUP' });
        await assert.rejects(node.writeZeroes(0, 256 * KiB, { allocate: true }), { code: 'ENOTSUP' });
        const back = new Uint8Array(2 * MiB);
        await node.read(0, back);
        assertBytesEqual(back.subarray(256 * KiB), pattern(2 * MiB, 8).subarray(256 * KiB), 'nothing past the refused range changed');
      } finally {
        await node.close();
      }
    });
  });
});
