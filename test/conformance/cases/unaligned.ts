import { test } from 'node:test';
import type { Stack } from '../../helpers/stacks.js';
import { SIZE, withImage, type Image } from '../harness.js';

const DELTAS = [-3, -2, -1, 0, 1, 2, 3];
const LENGTHS = [1, 2, 3, 7, 511, 512, 513, 4095, 4096, 4097, 8193];

/** Every small offset around each boundary, with every length, written then read back. */
async function sweep(img: Image, boundaries: number[]): Promise<void> {
  const size = img.model.byteLength;
  for (const b of boundaries) {
    for (const d of DELTAS) {
      for (const len of LENGTHS) {
        const off = b + d;
        if (off < 0 || off + len > size) continue;
        await img.write(off, img.bytes(len));
        await img.expectRange(off, len, `read-after-write (${off}, ${len})`);
        // The neighbours, read unaligned across the edges of the write.
        const lo = Math.max(0, off - 3);
        await img.expectRange(lo, Math.min(size, off + len + 3) - lo, `around (${off}, ${len})`);
      }
    }
  }
  await img.expectAll();
}

export function unalignedCases(stack: Stack): void {
  test('unaligned writes and reads near block boundaries', () => withImage(stack, SIZE, (img) =>
    sweep(img, [0, 512, 4096, 8192, 12288 + 512])));

  test('unaligned I/O that ends at the end of the image', () => withImage(stack, SIZE, async (img) => {
    for (const len of LENGTHS) {
      for (const d of [0, 1, 2, 3]) {
        const off = SIZE - len - d;
        await img.write(off, img.bytes(len));
        await img.expectRange(off, SIZE - off, `tail (${off}, ${len})`);
      }
    }
    await img.expectAll();
  }));

  test('unaligned reads of every small offset and length inside a block pair', () => withImage(stack, SIZE, async (img) => {
    for (let off = 4096 - 5; off <= 4096 + 5; off++) {
      for (let len = 1; len <= 9; len++) await img.expectRange(off, len);
      await img.expectRange(off, 4096 + 3);
    }
  }));

  // An image whose size is not a multiple of any block size: the last block is partial. (The
  // file driver rounds a file's size up to whole sectors, so the device size is what counts.)
  test('an image of odd size: I/O in and around the partial last block', () => withImage(stack, 3 * 4096 + 1234, async (img) => {
    const size = img.model.byteLength;
    await sweep(img, [4096, 8192, 12288, size - 600]);
    for (const len of [1, 3, 1234, 1235, 4096, 5000]) {
      await img.write(size - len, img.bytes(len));
      await img.expectRange(size - len, len, `last ${len} bytes`);
    }
    await img.writeZeroes(size - 1500, 1500);
    await img.writeZeroes(size - 7, 3);
    await img.node.discard(size - 3000, 3000);
    img.model.set(await img.read(size - 3000, 3000), size - 3000);
    await img.expectAll();
  }));

  test('large writes and reads spanning many blocks', () => withImage(stack, 256 * 1024, async (img) => {
    await img.write(1, img.bytes(256 * 1024 - 2));
    await img.expectAll();
    await img.write(4095, img.bytes(100_003));
    await img.expectRange(4000, 101_000);
  }));
}
