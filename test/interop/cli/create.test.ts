import assert from 'node:assert/strict';
import { test } from 'node:test';
import { vdisk } from '../../helpers/cli.js';
import { needTools, runOk } from '../../helpers/oracles.js';
import { makeTmpDir } from '../../helpers/tmp.js';

/** Option sets for `create`, each run through qemu-img and vdisk: the "Formatting" lines must match. */
const CASES: { format: string; args: string[] }[] = [
  { format: 'raw', args: [] },
  { format: 'raw', args: ['-o', 'preallocation=falloc'] },
  { format: 'qcow2', args: [] },
  { format: 'qcow2', args: ['-o', 'compat=0.10'] },
  { format: 'qcow2', args: ['-o', 'cluster_size=4k,lazy_refcounts=on,preallocation=metadata'] },
  { format: 'qcow2', args: ['-o', 'compat=1.1,refcount_bits=1'] },
  { format: 'qcow2', args: ['-o', 'extended_l2=on,compression_type=zstd,cluster_size=2M'] },
  { format: 'qcow2', args: ['-o', 'data_file=NAME.data,data_file_raw=on'] },
  { format: 'qcow2', args: ['-b', 'base.qcow2', '-F', 'qcow2'] },
];

test("vdisk create prints qemu-img create's Formatting line: options in QEMU's order, defaults shown", async (t) => {
  if (!needTools(t, 'qemu-img')) return;
  const tmp = await makeTmpDir();
  t.after(() => tmp.cleanup());
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', tmp.path('base.qcow2'), '64M']);
  for (const [i, c] of CASES.entries()) {
    const line = async (tool: 'qemu' | 'vdisk'): Promise<string> => {
      const name = `${tool}-${i}`;
      const args = ['create', '-f', c.format, ...c.args.map((a) => a.replace('NAME', tmp.path(name)).replace('base.qcow2', tmp.path('base.qcow2'))),
        tmp.path(`${name}.img`), ...(c.args.includes('-b') ? [] : ['64M'])];
      const out = tool === 'qemu' ? await runOk('qemu-img', args) : (await vdisk(args)).stdout;
      return out.trim().replaceAll(name, 'NAME');
    };
    assert.equal(await line('vdisk'), await line('qemu'), `${c.format} ${c.args.join(' ')}`);
  }
});
