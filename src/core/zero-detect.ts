import { native } from '../native/index.js';

/*
 * All-zero detection at memory speed. Buffer.compare is a memcmp, so comparing against a static
 * zero block costs one pass over the data (the zero block stays in L1/L2). The native scan reads
 * one buffer instead of two and wins on large buffers; the call overhead loses on small ones.
 */
const ZERO_BLOCK = Buffer.alloc(64 * 1024);
const NATIVE_THRESHOLD = 16 * 1024;

export function isAllZero(buf: Uint8Array): boolean {
  const len = buf.byteLength;
  if (len === 0) return true;
  // Cheap early exit: most data blocks have a non-zero byte at the very start or end.
  if (buf[0] !== 0 || buf[len - 1] !== 0) return false;
  if (native && len >= NATIVE_THRESHOLD) return native.isZero(buf);
  const bytes = Buffer.from(buf.buffer, buf.byteOffset, len);
  for (let off = 0; off < len; off += ZERO_BLOCK.length) {
    const end = Math.min(off + ZERO_BLOCK.length, len);
    if (Buffer.compare(bytes.subarray(off, end), ZERO_BLOCK.subarray(0, end - off)) !== 0) return false;
  }
  return true;
}

/** Returns a buffer of `length` zero bytes; shared and read-only by convention for small sizes. */
export function zeroBuffer(length: number): Uint8Array {
  return length <= ZERO_BLOCK.length ? ZERO_BLOCK.subarray(0, length) : new Uint8Array(length);
}
