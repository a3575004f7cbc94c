/**
 * Lazy refcounts as an open image shows them: the dirty bit goes to disk before the first
 * metadata change, stays over flushes, and a clean close clears it; without lazy refcounts it
 * is never set. The header is read from the file itself, as another process would see it.
 * What QEMU makes of the result (and of a crash in the middle) is in
 * test/interop/drivers/qcow2/lazy-refcounts.test.ts.
 */
import assert from 'node:assert/strict';
import { open as openFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Qcow2Node } from '../../../../../src/drivers/format/qcow2/qcow2-node.js';
import { open, type NodeSpec } from '../../../../../src/registry/index.js';
import { pattern } from '../../../../helpers/bytes.js';
import { vdisk } from '../../../../helpers/cli.js';
import { makeTmpDir, type TmpDir } from '../../../../helpers/tmp.js';

const MiB = 1024 * 1024;
const DIRTY = 1n;

let tmp: TmpDir;
before(async () => {
  tmp = await makeTmpDir('vdisk-lazy-refcounts-');
});
after(() => tmp.cleanup());

async function create(name: string, options: string): Promise<string> {
  const file = tmp.path(name);
  const r = await vdisk(['create', '-q', '-f', 'qcow2', '-o', options, file, '64M']);
  assert.equal(r.code, 0, r.stderr);
  return file;
}

/** The incompatible-features field as it is on disk now. */
async function incompatibleOnDisk(file: string): Promise<bigint> {
  const fh = await openFile(file, 'r');
  try {
    const field = Buffer.alloc(8);
    await fh.read(field, 0, 8, 72);
    return field.readBigUInt64BE(0);
  } finally {
    await fh.close();
  }
}

const dirtyOnDisk = async (file: string) => ((await incompatibleOnDisk(file)) & DIRTY) !== 0n;

async function openQcow2(file: string, options: Record<string, unknown> = {}): Promise<Qcow2Node> {
  const node = await open({ driver: 'qcow2', file, ...options } as NodeSpec);
  assert.ok(node instanceof Qcow2Node);
  return node;
}

describe('qcow2 lazy refcounts', () => {
  it('set the dirty bit before the first metadata change, keep it over flushes, clear it on close', async () => {
    const file = await create('lazy.qcow2', 'compat=1.1,lazy_refcounts=on');
    const node = await openQcow2(file);
    await node.read(0, new Uint8Array(65536));
    assert.equal(await dirtyOnDisk(file), false, 'reading changes nothing');
    await node.write(0, pattern(MiB, 1));
    assert.equal(await dirtyOnDisk(file), true, 'on disk before any table could be');
    assert.equal(node.dirty, true);
    assert.equal(node.imageInfo()['dirty-flag'], true);
    await node.flush();
    assert.equal(await dirtyOnDisk(file), true, 'a flush leaves it set, as QEMU does');
    await node.writeZeroes(2 * MiB, MiB, { mayUnmap: true });
    await node.discard(0, 65536);
    await node.close();
    assert.equal(await dirtyOnDisk(file), false, 'a clean close clears it');

    const again = await openQcow2(file);
    const result = await again.check('none');
    assert.deepEqual([result.corruptions, result.leaks], [0, 0]);
    const back = new Uint8Array(MiB - 65536);
    await again.read(65536, back);
    assert.deepEqual(back, pattern(MiB, 1).subarray(65536));
    await again.close();
  });

  it('a zero write or discard alone marks the image dirty too', async () => {
    const file = await create('zero.qcow2', 'compat=1.1,lazy_refcounts=on');
    const node = await openQcow2(file);
    await node.writeZeroes(0, MiB);
    assert.equal(await dirtyOnDisk(file), true);
    await node.close();
    assert.equal(await dirtyOnDisk(file), false);
  });

  it('are not used without the compatible bit, nor with lazy-refcounts=off', async () => {
    for (const [name, options, runtime] of [
      ['plain.qcow2', 'compat=1.1', {}],
      ['off.qcow2', 'compat=1.1,lazy_refcounts=on', { 'lazy-refcounts': 'off' }],
    ] as const) {
      const file = await create(name, options);
      const node = await openQcow2(file, runtime);
      await node.write(0, pattern(MiB, 2));
      await node.flush();
      assert.equal(await dirtyOnDisk(file), false, name);
      await node.close();
    }
  });

  it('lazy-refcounts=on works on an image without the bit, and is refused for compat=0.10', async () => {
    const file = await create('on.qcow2', 'compat=1.1');
    const node = await openQcow2(file, { 'lazy-refcounts': 'on' });
    await node.write(0, pattern(MiB, 3));
    assert.equal(await dirtyOnDisk(file), true);
    await node.close();
    assert.equal(await dirtyOnDisk(file), false);

    const v2 = await create('v2.qcow2', 'compat=0.10');
    await assert.rejects(openQcow2(v2, { 'lazy-refcounts': 'on' }), {
      code: 'EINVAL', message: 'Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level',
    });
  });

  it('a read-only open never touches the bit', async () => {
    const file = await create('ro.qcow2', 'compat=1.1,lazy_refcounts=on');
    const node = await openQcow2(file, { 'read-only': true });
    await node.read(0, new Uint8Array(4096));
    await node.close();
    assert.equal(await dirtyOnDisk(file), false);
  });
});
