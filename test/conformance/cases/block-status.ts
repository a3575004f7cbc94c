import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Extent } from '../../../src/core/types.js';
import { assertBytesEqual } from '../../helpers/bytes.js';
import type { Stack } from '../../helpers/stacks.js';
import { collectExtents, SIZE, withImage, type Image } from '../harness.js';

/** Extents cover [offset, offset+length) exactly, in order; zero reads zero; data reads the model. */
async function checkExtents(img: Image, offset: number, length: number): Promise<Extent[]> {
  const exts = await collectExtents(img.node, offset, length);
  let pos = offset;
  for (const e of exts) {
    const what = `${img.stack.name}: extent ${JSON.stringify(e)} in [${offset}, +${length})`;
    assert.equal(e.offset, pos, `${what}: gap or overlap`);
    assert.ok(Number.isSafeInteger(e.length) && e.length > 0, `${what}: bad length`);
    assert.ok(Number.isSafeInteger(e.depth) && e.depth >= 0, `${what}: bad depth`);
    assert.equal(typeof e.data, 'boolean');
    assert.equal(typeof e.zero, 'boolean');
    assert.equal(typeof e.present, 'boolean');
    const got = await img.read(e.offset, e.length);
    if (e.zero) assertBytesEqual(got, new Uint8Array(e.length), `${what}: zero extent`, e.offset);
    assertBytesEqual(got, img.model.subarray(e.offset, e.offset + e.length), `${what}: contents`, e.offset);
    pos += e.length;
  }
  assert.equal(pos, offset + length, `${img.stack.name}: extents end at ${pos}, not ${offset + length}`);
  return exts;
}

export function blockStatusCases(stack: Stack): void {
  test('extents cover the image exactly and describe what reads return', () => withImage(stack, SIZE, async (img) => {
    await checkExtents(img, 0, SIZE);
    await img.writeZeroes(4096, 8192, { mayUnmap: true });
    await img.writeZeroes(20_000, 5000);
    await img.node.discard(32768, 8192);
    img.model.set(await img.read(32768, 8192), 32768);
    await img.write(5000, img.bytes(100));
    await checkExtents(img, 0, SIZE);
    for (const [o, l] of [[1, 1], [4095, 2], [4096, 8192], [4097, 8190], [5000, 100], [SIZE - 1, 1], [12345, 23456]]) {
      await checkExtents(img, o!, l!);
    }
  }));

  test('an image never written is described consistently', () => withImage(stack, SIZE, async (img) => {
    const exts = await checkExtents(img, 0, SIZE);
    assert.ok(exts.length >= 1);
  }, false));

  test('blockStatus answers one run, starting where asked and no longer than asked', () => withImage(stack, SIZE, async (img) => {
    await img.writeZeroes(8192, 8192, { mayUnmap: true });
    for (const [o, l] of [[0, 1], [0, SIZE], [8191, 3], [8192, 100], [9000, 50_000], [SIZE - 2, 2]]) {
      const e = await img.node.blockStatus(o!, l!);
      assert.equal(e.offset, o);
      assert.ok(e.length >= 1 && e.length <= l!, `blockStatus(${o}, ${l}) -> ${e.length}`);
    }
  }));
}
