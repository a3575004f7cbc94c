import type { BlockLimits } from './types.js';

// Arithmetic rather than bit operations: offsets exceed 32 bits.
export function alignDown(n: number, align: number): number {
  return n - (n % align);
}

export function alignUp(n: number, align: number): number {
  const r = n % align;
  return r === 0 ? n : n + (align - r);
}

export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

const GiB = 1024 ** 3;

export function defaultLimits(overrides: Partial<BlockLimits> = {}): BlockLimits {
  return {
    requestAlignment: 1,
    maxTransfer: 32 * 1024 * 1024,
    optTransfer: 0,
    zeroAlignment: 1,
    maxWriteZeroes: GiB,
    discardAlignment: 1,
    maxDiscard: GiB,
    memoryAlignment: 1,
    ...overrides,
  };
}
