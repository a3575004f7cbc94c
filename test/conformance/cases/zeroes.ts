import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import type { ZeroOptions } from '../../../src/core/types.js';
import { needNative } from '../../helpers/native.js';
import type { Stack } from '../../helpers/stacks.js';
import { collectExtents, SIZE, withImage, type Image } from '../harness.js';

/** [offset, length]: aligned, unaligned, inside one block, up to the end, the whole image. */
const RANGES: [number, number][] = [
  [8192, 8192], [4000, 9000], [100, 200], [4095, 2], [SIZE - 5000, 5000], [SIZE - 4096, 4096], [0, SIZE],
];

const VARIANTS: ZeroOptions[] = [{}, { mayUnmap: true }, { fua: true }, { mayUnmap: true, fua: true }];

/** Either zeroes the range or fails with ENOTSUP leaving the image as it was. */
async function zeroOrRefuse(img: Image, off: number, len: number, opts: ZeroOptions): Promise<void> {
  let refused: unknown;
  try {
    await img.node.writeZeroes(off, len, opts);
  } catch (err) {
    refused = err;
  }
  const what = `writeZeroes(${off}, ${len}, ${JSON.stringify(opts)})`;
  if (refused === undefined) {
    img.model.fill(0, off, off + len);
  } else {
    assert.ok(refused instanceof BlockError && refused.code === 'ENOTSUP', `${what} failed with ${String(refused)}`);
  }
  await img.expectAll(`${what} (${refused ? 'refused' : 'done'})`);
}

export function zeroCases(stack: Stack): void {
  test('write-zeroes reads back zeros', () => withImage(stack, SIZE, async (img) => {
    for (const opts of VARIANTS) {
      for (const [off, len] of RANGES) {
        await img.fill();
        await img.writeZeroes(off, len, opts);
        await img.expectAll(`writeZeroes(${off}, ${len}, ${JSON.stringify(opts)})`);
      }
    }
  }));

  test('noFallback and allocate either zero or fail with ENOTSUP leaving the data intact', () => withImage(stack, SIZE, async (img) => {
    for (const opts of [{ noFallback: true }, { noFallback: true, mayUnmap: true }, { allocate: true }] as ZeroOptions[]) {
      for (const [off, len] of RANGES) {
        await img.fill();
        await zeroOrRefuse(img, off, len, opts);
      }
    }
    if (!img.node.caps.fastZero) {
      await img.fill();
      await assert.rejects(img.node.writeZeroes(0, 4096, { noFallback: true }), { code: 'ENOTSUP' });
      await img.expectAll();
    }
  }));

  test('write-zeroes with mayUnmap leaves a hole', async (t) => {
    if (!stack.features.punchesHoles) return t.skip(`${stack.name} does not promise holes`);
    if (!needNative(t)) return;
    await withImage(stack, SIZE, async (img) => {
      const before = await img.node.allocatedSize();
      await img.writeZeroes(16384, 32768, { mayUnmap: true });
      await img.expectAll();
      const exts = await collectExtents(img.node, 16384, 32768);
      assert.ok(exts.every((e) => e.zero && !e.data), `extents after unmapping: ${JSON.stringify(exts)}`);
      const after = await img.node.allocatedSize();
      assert.ok(before !== undefined && after !== undefined && after <= before - 32768, `allocated ${before} -> ${after}`);
    });
  });

  for (const mode of ['on', 'unmap'] as const) {
    test(`detect-zeroes=${mode} turns all-zero writes into zero writes`, () => withImage(stack, SIZE, async (img) => {
      const node = await img.inst.reopen({ detectZeroes: mode });
      assert.equal(node.detectZeroes, mode);
      const calls: ZeroOptions[] = [];
      const original = node.writeZeroes.bind(node);
      node.writeZeroes = (o, l, opts = {}) => {
        calls.push(opts);
        return original(o, l, opts);
      };
      for (const [off, len] of RANGES) {
        await img.fill();
        calls.length = 0;
        await node.write(off, new Uint8Array(len));
        img.model.fill(0, off, off + len);
        assert.equal(calls.length, 1, `write(${off}, ${len} zero bytes) became ${calls.length} zero writes`);
        assert.equal(!!calls[0]!.mayUnmap, mode === 'unmap');
        await img.expectAll(`zero write (${off}, ${len})`);
      }
      // Data that is not all zero is written as data.
      calls.length = 0;
      const data = new Uint8Array(4096);
      data[4095] = 1;
      await img.write(4096, data);
      assert.equal(calls.length, 0);
      await img.expectAll();
    }));
  }

  test('detect-zeroes=unmap on a host file leaves a hole', async (t) => {
    if (!stack.features.punchesHoles) return t.skip(`${stack.name} does not promise holes`);
    if (!needNative(t)) return;
    await withImage(stack, SIZE, async (img) => {
      await img.inst.reopen({ detectZeroes: 'unmap' });
      const before = await img.node.allocatedSize();
      await img.write(8192, new Uint8Array(32768));
      await img.expectAll();
      const exts = await collectExtents(img.node, 8192, 32768);
      assert.ok(exts.every((e) => e.zero && !e.data), `extents: ${JSON.stringify(exts)}`);
      const after = await img.node.allocatedSize();
      assert.ok(before !== undefined && after !== undefined && after <= before - 32768, `allocated ${before} -> ${after}`);
    });
  });
}
