/** A small qcow2 chain for the job tests, made by vdisk itself (the interop tests use QEMU's). */
import type { BlockNode } from '../../../src/core/block-node.js';
import { open, registry } from '../../../src/registry/index.js';
import { pattern } from '../../helpers/bytes.js';

const KiB = 1024;
export const SIZE = 2048 * KiB;

/** base.qcow2 (data all over) ← top.qcow2 (some data of its own), 4 KiB clusters, made by vdisk itself. */
export async function chain(dir: string): Promise<{ top: string; contents: Uint8Array }> {
  const qcow2 = registry.get('qcow2');
  await qcow2.create!({ filename: `${dir}/base.qcow2`, size: SIZE, options: { cluster_size: '4096' } });
  await qcow2.create!({ filename: `${dir}/top.qcow2`, size: SIZE, options: { cluster_size: '4096', backing_file: 'base.qcow2', backing_fmt: 'qcow2' } });
  const contents = pattern(SIZE, 7);
  const top = pattern(64 * KiB, 8);
  {
    await using base = await open(`${dir}/base.qcow2`, { format: 'qcow2' });
    await base.write(0, contents);
  }
  {
    await using t = await open(`${dir}/top.qcow2`, { format: 'qcow2' });
    await t.write(512 * KiB, top);
  }
  contents.set(top, 512 * KiB);
  return { top: `${dir}/top.qcow2`, contents };
}

export async function readAll(node: BlockNode): Promise<Uint8Array> {
  const buf = new Uint8Array(node.size);
  await node.read(0, buf);
  return buf;
}
