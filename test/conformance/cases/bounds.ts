import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Stack } from '../../helpers/stacks.js';
import { collectExtents, rejectsWith, SIZE, withImage, type Image } from '../harness.js';

type Op = (img: Image, offset: number, length: number) => Promise<unknown>;

const OPS: Record<string, Op> = {
  read: (img, o, l) => img.node.read(o, new Uint8Array(Math.max(0, Math.min(l, 1 << 20)))),
  write: (img, o, l) => img.node.write(o, new Uint8Array(Math.max(0, Math.min(l, 1 << 20))).fill(0xaa)),
  writeZeroes: (img, o, l) => img.node.writeZeroes(o, l),
  discard: (img, o, l) => img.node.discard(o, l),
};

export function boundsCases(stack: Stack): void {
  test('limits: the promised request alignment, and consistent transfer sizes', () => withImage(stack, SIZE, async (img) => {
    const l = img.node.limits;
    assert.equal(l.requestAlignment, stack.features.alignment);
    for (const k of ['requestAlignment', 'memoryAlignment', 'zeroAlignment', 'discardAlignment'] as const) {
      assert.ok(Number.isSafeInteger(l[k]) && l[k] > 0 && (l[k] & (l[k] - 1)) === 0, `${k} = ${l[k]}`);
    }
    for (const k of ['maxTransfer', 'maxWriteZeroes', 'maxDiscard'] as const) {
      assert.ok(l[k] >= l.requestAlignment && l[k] % l.requestAlignment === 0, `${k} = ${l[k]}`);
    }
  }, false));

  test('requests past the end fail with ERANGE and change nothing', () => withImage(stack, SIZE, async (img) => {
    for (const [name, op] of Object.entries(OPS)) {
      for (const [o, l] of [[SIZE - 10, 11], [SIZE, 1], [SIZE + 1, 0], [0, SIZE + 1], [SIZE - 1, 2], [SIZE + 4096, 4096]]) {
        await rejectsWith(() => op(img, o!, l!), 'ERANGE', `${name}(${o}, ${l})`);
      }
    }
    // Offsets or lengths so large that the sum leaves the safe integers are still just "too far".
    await rejectsWith(img.node.writeZeroes(SIZE - 1, Number.MAX_SAFE_INTEGER), 'ERANGE', 'writeZeroes(huge length)');
    await rejectsWith(img.node.discard(Number.MAX_SAFE_INTEGER, 1), 'ERANGE', 'discard(MAX_SAFE_INTEGER)');
    await img.expectAll();
  }));

  test('invalid offsets and lengths fail with EINVAL', () => withImage(stack, SIZE, async (img) => {
    for (const [name, op] of Object.entries(OPS)) {
      for (const o of [-1, 1.5, NaN, Infinity, -Infinity, 2 ** 53, -0.5]) {
        await rejectsWith(() => op(img, o, 1), 'EINVAL', `${name}(offset ${o})`);
      }
    }
    for (const name of ['writeZeroes', 'discard']) {
      for (const l of [-1, 0.5, NaN, Infinity, 2 ** 53]) {
        await rejectsWith(() => OPS[name]!(img, 0, l), 'EINVAL', `${name}(length ${l})`);
      }
    }
    await img.expectAll();
  }));

  test('errors carry the operation, offset and length', () => withImage(stack, SIZE, async (img) => {
    await assert.rejects(img.node.writeZeroes(SIZE, 7), (err: any) => {
      assert.equal(err.context.op, 'write-zeroes');
      assert.equal(err.context.offset, SIZE);
      assert.equal(err.context.length, 7);
      assert.doesNotMatch(err.message, /\n/);
      return true;
    });
  }));

  test('zero-length requests are no-ops, also at the very end', () => withImage(stack, SIZE, async (img) => {
    for (const o of [0, 1, 4095, 4096, SIZE - 1, SIZE]) {
      await img.node.read(o, new Uint8Array(0));
      await img.node.write(o, new Uint8Array(0));
      await img.node.writeZeroes(o, 0);
      await img.node.writeZeroes(o, 0, { noFallback: true });
      await img.node.discard(o, 0);
    }
    assert.deepEqual(await collectExtents(img.node, 0, 0), []);
    await img.expectAll();
  }));

  test('block status checks its range', () => withImage(stack, SIZE, async (img) => {
    await rejectsWith(img.node.blockStatus(SIZE, 1), 'ERANGE', 'blockStatus(size, 1)');
    await rejectsWith(img.node.blockStatus(SIZE + 1, 1), 'ERANGE', 'blockStatus(size + 1, 1)');
    for (const [o, l] of [[-1, 1], [1.5, 1], [NaN, 1], [0, -1], [0, 0.5], [2 ** 53, 1]]) {
      await rejectsWith(img.node.blockStatus(o!, l!), 'EINVAL', `blockStatus(${o}, ${l})`);
    }
    await rejectsWith(collectExtents(img.node, 0, SIZE + 1), 'ERANGE', 'extents past the end');
    await rejectsWith(collectExtents(img.node, -1, 2), 'EINVAL', 'extents at -1');
    // A request longer than the rest of the image is answered for the rest.
    const e = await img.node.blockStatus(SIZE - 3, Number.MAX_SAFE_INTEGER);
    assert.equal(e.offset, SIZE - 3);
    assert.ok(e.length >= 1 && e.length <= 3, `length ${e.length}`);
  }));
}
