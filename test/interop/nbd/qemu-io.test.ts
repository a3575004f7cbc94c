import assert from 'node:assert/strict';
import { copyFile, readFile } from 'node:fs/promises';
import { after, before, it } from 'node:test';
import { TIMING_LINE } from '../../../src/cli/io/report.js';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { serveOnSocket } from '../../helpers/nbd-server.js';
import { needTools, run, runOk, type RunResult } from '../../helpers/oracles.js';
import { makeSparseFile, makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

/*
 * qemu-io over nbd:// to `vdisk serve` must leave the same image, and print the same lines, as
 * the same qemu-io script run on a copy of the file directly: pattern writes (aligned and not),
 * FUA writes, zero writes with and without unmapping or fallback, discards, reads that check.
 */

const MiB = 1024 * 1024;
const SCRIPT = [
  'write -P 0xab 0 64k', 'write -P 0xcd 100000 5000', 'read -P 0xab 0 64k', 'read -P 0xcd 100000 5000',
  'write -z 1M 256k', 'write -z -u 2M 128k', 'write -z -n 3M 64k', 'write -z 1000001 3333', 'write -f -P 0x11 4M 4k',
  'discard 64k 64k', 'read -P 0 64k 64k', 'write -P 0x22 5M 1M', 'read -P 0x22 5M 1M', 'read -P 0 1M 256k', 'flush',
  'read -P 0x33 0 512', 'write -P 0x44 8388096 512', 'read -P 0x44 8388096 512',
];

let tmp: TmpDir;
before(async () => {
  tmp = await makeTmpDir('vdisk-nbd-qemu-io-');
});
after(() => tmp.cleanup());

const masked = (out: string) => out.split('\n').map((l) => l.replace(TIMING_LINE, '$1<timing>')).join('\n');

async function sameAsDirect(format: 'raw' | 'qcow2', make: (file: string) => Promise<void>): Promise<void> {
  const served = tmp.path(`served.${format}`);
  const direct = tmp.path(`direct.${format}`);
  await make(served);
  await copyFile(served, direct);
  const args = SCRIPT.flatMap((c) => ['-c', c]);
  const s = await serveOnSocket(tmp.dir, ['-f', format, '--discard=unmap', served]);
  let overNbd: RunResult;
  try {
    overNbd = await run('qemu-io', ['-f', 'raw', ...args, s.uri]);
  } finally {
    const exit = await s.proc.stop();
    assert.equal(exit.code, 0, exit.stderr);
  }
  const onFile = await run('qemu-io', ['-f', format, '-d', 'unmap', ...args, direct]);
  assert.deepEqual({ ...overNbd, stdout: masked(overNbd.stdout) }, { ...onFile, stdout: masked(onFile.stdout) });
  assert.match(onFile.stdout, /Pattern verification failed at offset 0/, 'the script checks a wrong pattern too');
  if (format === 'raw') {
    assertBytesEqual(await readFile(served), await readFile(direct), 'served vs direct');
  } else {
    await runOk('qemu-img', ['check', '-f', 'qcow2', served]);
    const cmp = await runOk('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', served, direct]);
    assert.match(cmp, /Images are identical/);
  }
}

it('raw: the same bytes and the same output as qemu-io on the file', async (t) => {
  if (!needTools(t, 'qemu-io')) return;
  await sameAsDirect('raw', (file) => makeSparseFile(file, 8 * MiB, [{ offset: 3 * MiB, data: pattern(MiB, 7) }]).then(() => {}));
});

it('qcow2: the same guest contents, and a clean image', async (t) => {
  if (!needTools(t, 'qemu-io', 'qemu-img')) return;
  await sameAsDirect('qcow2', async (file) => {
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', file, '8M']);
    await runOk('qemu-io', ['-c', 'write -P 0x77 3M 1M', file]);
  });
});
