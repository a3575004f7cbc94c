import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Stack } from '../../helpers/stacks.js';
import { SIZE, withImage } from '../harness.js';

export function flushCases(stack: Stack): void {
  test('flush succeeds with and without pending writes', () => withImage(stack, SIZE, async (img) => {
    await img.node.flush();
    await img.write(123, img.bytes(5000));
    await img.node.flush();
    await img.node.flush();
    await img.expectAll();
  }));

  test('FUA writes and zero writes read back', () => withImage(stack, SIZE, async (img) => {
    const caps = img.node.caps;
    assert.ok(caps.writable);
    assert.notEqual(caps.fua, 'none', 'a writable node offers FUA, natively or emulated');
    await img.write(0, img.bytes(4096), { fua: true });
    await img.write(4097, img.bytes(3), { fua: true });
    await img.write(10_000, img.bytes(20_000), { fua: true });
    await img.writeZeroes(5000, 7000, { fua: true });
    await img.writeZeroes(40_000, 4096, { fua: true, mayUnmap: true });
    await img.expectAll();
  }));

  test('writes, zero writes and flushes in flight together', () => withImage(stack, SIZE, async (img) => {
    const ops: Promise<void>[] = [];
    for (let i = 0; i < 16; i++) {
      const off = i * 4096 + (i % 3) * 100;
      ops.push(i % 4 === 3 ? img.writeZeroes(off, 1000) : img.write(off, img.bytes(1000), { fua: i % 2 === 0 }));
      if (i % 5 === 0) ops.push(img.node.flush());
    }
    await Promise.all(ops);
    await img.expectAll();
  }));
}
