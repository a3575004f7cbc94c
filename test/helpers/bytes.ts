/** Deterministic test bytes (xorshift32), never zero, so zeroed or punched bytes stand out. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = (seed | 0) || 0x9e3779b9;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (x & 0xff) || 1;
  }
  return out;
}

/** Index of the first differing byte, or -1 (compares the common length; unequal lengths differ there). */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.byteLength, b.byteLength);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.byteLength === b.byteLength ? -1 : n;
}

/** Throws with a useful message when the two byte ranges differ. */
export function assertBytesEqual(actual: Uint8Array, expected: Uint8Array, what: string, base = 0): void {
  const i = firstDiff(actual, expected);
  if (i === -1) return;
  const show = (u: Uint8Array) => Array.from(u.subarray(i, i + 8), (b) => b.toString(16).padStart(2, '0')).join(' ');
  throw new Error(`${what}: first difference at byte ${base + i} (actual ${show(actual)} …, expected ${show(expected)} …; lengths ${actual.byteLength}/${expected.byteLength})`);
}
