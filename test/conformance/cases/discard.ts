import assert from 'node:assert/strict';
import { test } from 'node:test';
import { nativeStatus } from '../../../src/native/index.js';
import { needNative } from '../../helpers/native.js';
import type { Stack } from '../../helpers/stacks.js';
import { alignDown, alignUp, collectExtents, SIZE, withImage, type Image } from '../harness.js';

const RANGES: [number, number][] = [
  [8192, 16384], [1000, 19000], [100, 200], [4095, 4098], [SIZE - 3000, 3000], [SIZE - 8192, 8192], [0, SIZE],
];

/**
 * Discard is advisory. Bytes outside the range, and in partial blocks at its ends (of the node's
 * discard granularity), must keep their data; the rest reads either the old data or zeros, never
 * anything else; stacks that promise it read zeros in every whole block.
 */
async function checkDiscard(img: Image, off: number, len: number): Promise<void> {
  const node = img.node;
  const size = img.model.byteLength;
  const a = Math.max(node.limits.discardAlignment, node.limits.requestAlignment);
  const mayStart = alignUp(off, a);
  const mayEnd = off + len === size ? size : alignDown(off + len, a);
  const mustZeroEnd = alignDown(off + len, a);
  const zeroes = img.stack.features.discardZeroes && (!img.stack.features.hostFile || nativeStatus.loaded);
  const old = img.model.slice();
  await node.discard(off, len);
  const got = await img.read(0, size);
  for (let i = 0; i < size; i++) {
    const inside = i >= mayStart && i < mayEnd;
    const ok = !img.persistent ? got[i] === 0
      : !inside ? got[i] === old[i]
      : zeroes && i < mustZeroEnd ? got[i] === 0
      : got[i] === old[i] || got[i] === 0;
    if (!ok) {
      assert.fail(`${img.stack.name}: discard(${off}, ${len}) left byte ${i} = ${got[i]} (was ${old[i]}; may change [${mayStart}, ${mayEnd}))`);
    }
  }
  img.model.set(got);
}

export function discardCases(stack: Stack): void {
  test('discard leaves old data or zeros, and partial blocks untouched', () => withImage(stack, SIZE, async (img) => {
    for (const [off, len] of RANGES) {
      await img.fill();
      await checkDiscard(img, off, len);
      // The image stays writable and readable afterwards.
      await img.write(off, img.bytes(Math.min(len, 777)));
      await img.expectAll();
    }
  }));

  test('discard on a host file punches holes', async (t) => {
    if (!stack.features.punchesHoles) return t.skip(`${stack.name} does not promise holes`);
    if (!needNative(t)) return;
    await withImage(stack, SIZE, async (img) => {
      const before = await img.node.allocatedSize();
      await img.node.discard(8192, 32768);
      img.model.fill(0, 8192, 8192 + 32768);
      await img.expectAll();
      const exts = await collectExtents(img.node, 8192, 32768);
      assert.ok(exts.every((e) => e.zero && !e.data), `extents after discard: ${JSON.stringify(exts)}`);
      const after = await img.node.allocatedSize();
      assert.ok(before !== undefined && after !== undefined && after <= before - 32768, `allocated ${before} -> ${after}`);
    });
  });
}
