/*
 * QEMU's size parser (qemu_strtosz of QEMU 7.2), for every layer that reads a size the way QEMU
 * does: command-line sizes, and node options such as qcow2's l2-cache-size. The corner cases are
 * checked against the real binaries (test/unit/cli/sizes.test.ts).
 */

export type StrtoszError = 'EINVAL' | 'ERANGE';

export type StrtoszResult =
  | { ok: true; value: bigint; /** hex with a suffix: accepted by QEMU 7.2 with a deprecation warning */ hexWithSuffix: boolean }
  | { ok: false; error: StrtoszError };

const U64_MAX = (1n << 64n) - 1n;
const SPACE = new Set([' ', '\t', '\n', '\v', '\f', '\r']);

/** The multiplier of a suffix letter (B K M G T P E, any case), or 0n when it is none. */
function suffixMultiplier(c: string | undefined, unit: bigint): bigint {
  const i = c === undefined ? -1 : 'BKMGTPE'.indexOf(c.toUpperCase());
  return i < 0 ? 0n : unit ** BigInt(i);
}

function digitValue(c: string | undefined): number {
  if (c === undefined) return 99;
  const code = c.charCodeAt(0);
  if (code >= 48 && code <= 57) return code - 48;
  if (code >= 97 && code <= 122) return code - 87;
  if (code >= 65 && code <= 90) return code - 55;
  return 99;
}

/**
 * glibc strtoull() as qemu_strtou64() wraps it: leading white space, a sign, a `0x` prefix in base
 * 16 (a bare "0x" parses as 0 and stops at the x), overflow is ERANGE with `end` past the digits,
 * no digits at all is EINVAL with `end` at the start.
 */
function strtou64(s: string, base: 10 | 16): { value: bigint; end: number; error?: StrtoszError } {
  let i = 0;
  while (i < s.length && SPACE.has(s[i]!)) i++;
  let negative = false;
  if (s[i] === '+' || s[i] === '-') negative = s[i++] === '-';
  if (base === 16 && s[i] === '0' && (s[i + 1] === 'x' || s[i + 1] === 'X') && digitValue(s[i + 2]) < 16) i += 2;
  const start = i;
  let value = 0n;
  let overflow = false;
  while (digitValue(s[i]) < base) {
    value = value * BigInt(base) + BigInt(digitValue(s[i]));
    if (value > U64_MAX) overflow = true;
    i++;
  }
  if (i === start) return { value: 0n, end: 0, error: 'EINVAL' };
  if (overflow) return { value: U64_MAX, end: i, error: 'ERANGE' };
  return { value: negative ? (-value & U64_MAX) : value, end: i };
}

const DBL_MIN = 2.2250738585072014e-308;

/** floor(f × 2^64) for 0 ≤ f ≤ 1, computed exactly; f = 1 yields 0 as x86's conversion does. */
function fractionToFixed64(f: number): bigint {
  if (f >= 1) return 0n;
  const { mant, exp } = decomposeDouble(f);
  const shift = exp + 64;
  return shift >= 0 ? mant << BigInt(shift) : mant >> BigInt(-shift);
}

/**
 * qemu_strtosz() of QEMU 7.2 with no end pointer (the whole string must be consumed): a decimal
 * integer, or 0x hex, with an optional suffix (B K M G T P E, powers of `unit`); a decimal
 * fraction only with a suffix above B, rounded to the nearest byte; no signs or exponents.
 */
export function qemuStrtosz(text: string, defaultSuffix = 'B', unit = 1024): StrtoszResult {
  const unitN = BigInt(unit);
  let error: StrtoszError | undefined;
  let end: number;
  let val = 0n;
  let valf = 0n;
  let hex = false;
  let hexWithSuffix = false;
  out: {
    const dec = strtou64(text, 10);
    ({ value: val, end } = dec);
    if (dec.error) {
      error = dec.error;
      break out;
    }
    if (text.slice(0, end).includes('-')) {
      [error, end] = ['EINVAL', 0];
      break out;
    }
    if (val === 0n && (text[end] === 'x' || text[end] === 'X')) {
      const h = strtou64(text, 16);
      ({ value: val, end } = h);
      if (h.error) {
        error = h.error;
        break out;
      }
      if (text[end] === '.') {
        [error, end] = ['EINVAL', 0];
        break out;
      }
      hex = true;
    } else if (text[end] === '.') {
      // strtod() from the dot: digits and an optional complete exponent.
      const m = /^\.\d+(?:[eE][+-]?\d+)?/.exec(text.slice(end));
      const fraction = m ? Number(m[0]) : NaN;
      if (!m || !Number.isFinite(fraction)) {
        end++;
      } else if (/[eE]/.test(m[0])) {
        [error, end] = ['EINVAL', 0];
        break out;
      } else if (fraction < DBL_MIN && /[1-9]/.test(m[0])) {
        // Underflow: strtod reports ERANGE and QEMU steps one character past the number.
        end = Math.min(end + m[0].length + 1, text.length);
      } else {
        end += m[0].length;
        valf = fractionToFixed64(fraction);
      }
    }
    let mul = suffixMultiplier(text[end], unitN);
    if (mul > 0n) {
      hexWithSuffix = hex;
      end++;
    } else {
      mul = suffixMultiplier(defaultSuffix, unitN);
    }
    if (mul === 1n) {
      if (valf !== 0n) {
        [error, end] = ['EINVAL', 0];
        break out;
      }
    } else {
      // Exact 64.64 fixed point times the multiplier, the fraction rounded half up.
      const frac = valf * mul;
      val = val * mul + (frac >> 64n) + ((frac >> 63n) & 1n);
      if (val > U64_MAX) {
        error = 'ERANGE';
        break out;
      }
    }
  }
  if (end < text.length) error = 'EINVAL';
  return error ? { ok: false, error } : { ok: true, value: val, hexWithSuffix };
}

/** A double as mant × 2^exp, exactly. */
export function decomposeDouble(x: number): { mant: bigint; exp: number } {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, Math.abs(x));
  const hi = view.getUint32(0);
  const lo = view.getUint32(4);
  const biased = (hi >>> 20) & 0x7ff;
  const mant = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  return biased === 0 ? { mant, exp: -1074 } : { mant: mant | (1n << 52n), exp: biased - 1075 };
}
