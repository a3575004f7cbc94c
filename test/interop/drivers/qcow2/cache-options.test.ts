/**
 * QEMU's qcow2 cache options (l2-cache-size, l2-cache-entry-size, refcount-cache-size,
 * cache-size, cache-clean-interval) against the real qemu-img and qemu-io 7.2:
 *   - the same option strings are accepted, and the invalid ones refused with QEMU's message
 *     (on one line: QEMU's size-parse message spans three);
 *   - images written through tiny caches of small slices (many evictions, L2 tables allocated
 *     and copied from a snapshot slice by slice) end up as QEMU's do with the same workload:
 *     `qemu-img compare` identical, `qemu-img check` clean, the snapshot untouched.
 */
import assert from 'node:assert/strict';
import { copyFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { vdisk } from '../../../helpers/cli.js';
import { needTools, run, runOk } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { cmdArgs, workload } from '../../../helpers/workload.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let tmp: TmpDir;
before(async () => {
  tmp = await makeTmpDir('vdisk-qcow2-cache-');
});
after(() => tmp.cleanup());

const imageOpts = (file: string, options: string) => `driver=qcow2,file.filename=${file}${options ? `,${options}` : ''}`;

/** The reason in qemu-img's "Could not open '…': REASON" (its first line). */
function qemuReason(stderr: string): string {
  const m = /Could not open '.*?': (.*)/.exec(stderr);
  assert.ok(m, `qemu-img said: ${stderr}`);
  return m[1]!;
}

describe('qcow2 cache options, as QEMU takes them', () => {
  const INVALID = [
    'l2-cache-entry-size=1000',
    'l2-cache-entry-size=256',
    'l2-cache-entry-size=128k',
    'l2-cache-size=abc',
    'refcount-cache-size=1Q',
    'cache-size=-5',
    'cache-clean-interval=-1',
    'cache-clean-interval=abc',
    'cache-clean-interval=5000000000',
    'cache-size=1M,l2-cache-size=2M',
    'cache-size=1M,l2-cache-size=512k,refcount-cache-size=256k',
    'cache-size=1M,refcount-cache-size=2M',
  ];
  const VALID = [
    'l2-cache-size=1.5M',
    'l2-cache-entry-size=512',
    'l2-cache-entry-size=4k,l2-cache-size=8k',
    'cache-size=1M',
    'cache-size=1M,refcount-cache-size=256k',
    'refcount-cache-size=0',
    'cache-clean-interval=0',
    'cache-clean-interval=4294967295',
  ];

  it('refuses the invalid ones with QEMU\'s message', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const file = tmp.path('opts.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', file, '1G']);
    for (const options of INVALID) {
      const q = await run('qemu-img', ['info', '--image-opts', imageOpts(file, options)]);
      assert.notEqual(q.code, 0, `qemu-img accepts ${options}`);
      const v = await vdisk(['info', '--image-opts', imageOpts(file, options)]);
      assert.equal(v.code, 1, `vdisk info with ${options}: ${v.stdout}${v.stderr}`);
      assert.equal(v.stderr.trimEnd().split('\n').length, 1, `one line: ${v.stderr}`);
      assert.ok(v.stderr.includes(qemuReason(q.stderr)), `${options}: vdisk says ${v.stderr.trim()}; qemu-img says ${qemuReason(q.stderr)}`);
    }
  });

  it('accepts the valid ones', async (t) => {
    if (!needTools(t, 'qemu-img')) return;
    const file = tmp.path('opts-ok.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', file, '1G']);
    for (const options of VALID) {
      await runOk('qemu-img', ['info', '--image-opts', imageOpts(file, options)]);
      const v = await vdisk(['info', '--image-opts', imageOpts(file, options)]);
      assert.equal(v.code, 0, `vdisk info with ${options}: ${v.stderr}`);
    }
  });

  /** One configuration: a workload through a small cache, vdisk on one copy and qemu-io on the other. */
  const CONFIGS = [
    { name: '512-byte slices, two of them', options: 'l2-cache-entry-size=512,l2-cache-size=1k', seed: 0xcac0001 },
    { name: '4 KiB slices, two of them, over a snapshot', options: 'l2-cache-entry-size=4k,l2-cache-size=8k', snapshot: true, seed: 0xcac0002 },
    { name: 'cache-size=256k (QEMU splits it; L2 in 4 KiB slices)', options: 'cache-size=256k', seed: 0xcac0003 },
  ];
  for (const c of CONFIGS) {
    it(`writes through ${c.name} as QEMU does`, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      // 64 KiB clusters, 1.5 GiB: three L2 tables of 16 slices of 4 KiB (128 of 512 bytes).
      const size = 1536 * MiB;
      const base = tmp.path(`${c.seed}.qcow2`);
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(size)]);
      await runOk('qemu-io', ['-f', 'qcow2', ...cmdArgs(['write -P 0x5a 0 1M', 'write -P 0x5b 600M 256k', 'write -P 0x5c 1100M 64k']), base]);
      if (c.snapshot) await runOk('qemu-img', ['snapshot', '-c', 'before', base]);
      const q = tmp.path(`${c.seed}-qemu.qcow2`);
      const v = tmp.path(`${c.seed}-vdisk.qcow2`);
      await copyFile(base, q);
      await copyFile(base, v);
      // Writes spread over the whole disk (the workload keeps to 4 clusters per command).
      const cmds = workload({ size, clusterSize: 64 * KiB, count: 400, seed: c.seed, maxClusters: 4 });
      const qr = await run('qemu-io', ['--image-opts', ...cmdArgs(cmds), imageOpts(q, c.options)]);
      assert.equal(qr.code, 0, qr.stderr);
      const vr = await vdisk(['io', '--image-opts', ...cmdArgs(cmds), imageOpts(v, c.options)]);
      assert.equal(vr.code, 0, vr.stderr);
      const compare = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', q, v]);
      assert.equal(compare.code, 0, `qemu-img compare: ${compare.stdout}${compare.stderr}`);
      const check = await run('qemu-img', ['check', '--output=json', v]);
      assert.equal(check.code, 0, `qemu-img check: ${check.stdout}${check.stderr}`);
      const result = JSON.parse(check.stdout) as Record<string, unknown>;
      assert.equal(result.corruptions ?? 0, 0);
      assert.equal(result.leaks ?? 0, 0);
      if (c.snapshot) {
        // The snapshot still reads as the image did before the workload.
        for (const [image, name] of [[base, 'base'], [v, 'vdisk']] as const) {
          await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', '-l', 'snapshot.name=before', image, tmp.path(`${c.seed}-${name}.raw`)]);
        }
        await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', tmp.path(`${c.seed}-base.raw`), tmp.path(`${c.seed}-vdisk.raw`)]);
      }
    });
  }
});
