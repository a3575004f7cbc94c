/*
 * 64-bit wire fields without BigInt. A BigInt per field was two allocations per request on the
 * hot path; offsets and sizes vdisk handles stay below 2^53, where a number is exact, and a larger
 * value read from the wire becomes a number at least 2^53 — still past the end of any export.
 */

/** The upper 32 bits of `n`, an integer below 2^53. */
export function high32(n: number): number {
  return Math.floor(n / 2 ** 32);
}

/** The lower 32 bits of `n`, an integer below 2^53 (`>>>` takes it modulo 2^32, exactly). */
export function low32(n: number): number {
  return n >>> 0;
}

/** Writes `n` (an integer below 2^53) as a big-endian u64. */
export function writeU64(b: Buffer, at: number, n: number): void {
  b.writeUInt32BE(high32(n), at);
  b.writeUInt32BE(low32(n), at + 4);
}

/** The big-endian u64 at `at`: exact below 2^53, rounded above. */
export function readU64(b: Buffer, at: number): number {
  return b.readUInt32BE(at) * 2 ** 32 + b.readUInt32BE(at + 4);
}

/** The number two 32-bit halves make (exact below 2^53). */
export function joinU64(high: number, low: number): number {
  return high * 2 ** 32 + low;
}

/** The exact decimal value of two halves, for messages. */
export function u64Text(high: number, low: number): string {
  const n = joinU64(high, low);
  return Number.isSafeInteger(n) ? String(n) : String((BigInt(high) << 32n) | BigInt(low));
}
