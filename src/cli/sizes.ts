import { decomposeDouble, qemuStrtosz } from '../core/sizes.js';
import { UsageError } from './errors.js';

/*
 * Sizes as QEMU reads and prints them. Scripts feed the same strings to qemu-img/qemu-io and to
 * vdisk and compare the output, so both directions follow QEMU 7.2 exactly, including its
 * corner cases (checked against the real binaries; see test/unit/cli/sizes.test.ts). The parser
 * itself is in core/sizes.ts, since drivers read sizes from node options too.
 */
export { qemuStrtosz, type StrtoszError, type StrtoszResult } from '../core/sizes.js';

/**
 * A size for vdisk's qemu-img-shaped commands: qemu_strtosz() plus the limit of what vdisk can
 * address (a safe integer, 8 PiB).
 */
export function parseSize(text: string, what = 'size'): number {
  const r = qemuStrtosz(text);
  if (!r.ok && r.error === 'EINVAL') throw new UsageError(`Invalid ${what} specified: '${text}'`);
  if (!r.ok || r.value > BigInt(Number.MAX_SAFE_INTEGER)) throw new UsageError(`Invalid ${what} specified: '${text}' is too large`);
  return Number(r.value);
}

/**
 * printf("%.Nf") as glibc does it: the exact binary value rounded half to even (JS toFixed
 * rounds ties up, so 1088 B would print as 1.063 KiB where QEMU prints 1.062 KiB).
 */
export function formatFixed(x: number, digits: number): string {
  // An x86 NaN from 0/0 has its sign bit set, which glibc prints.
  if (Number.isNaN(x)) return '-nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  const negative = x < 0 || Object.is(x, -0);
  const { mant, exp } = decomposeDouble(x);
  const scale = 10n ** BigInt(digits);
  let q: bigint;
  if (exp >= 0) {
    q = (mant << BigInt(exp)) * scale;
  } else {
    const num = mant * scale;
    const den = 1n << BigInt(-exp);
    q = num / den;
    const twice = (num % den) * 2n;
    if (twice > den || (twice === den && (q & 1n) === 1n)) q += 1n;
  }
  let s = q.toString();
  if (digits > 0) {
    s = s.padStart(digits + 1, '0');
    s = `${s.slice(0, -digits)}.${s.slice(-digits)}`;
  }
  return (negative ? '-' : '') + s;
}

const BINARY_UNITS: readonly [number, string][] = [
  [2 ** 60, 'EiB'], [2 ** 50, 'PiB'], [2 ** 40, 'TiB'], [2 ** 30, 'GiB'], [2 ** 20, 'MiB'], [2 ** 10, 'KiB'],
];

/**
 * qemu-io's cvtstr(): "%.3f" in the largest binary unit it reaches, or "%f bytes"; the first
 * ".000" and everything after it is cut, so "4 KiB", "68.359 KiB", "512 bytes", "0.500000 bytes".
 */
export function humanSize(value: number): string {
  let text: string;
  let suffix = 'bytes';
  const unit = BINARY_UNITS.find(([scale]) => value >= scale);
  if (unit) {
    text = formatFixed(value / unit[0], 3);
    suffix = unit[1];
  } else {
    text = formatFixed(value, 6);
  }
  const cut = text.indexOf('.000');
  return `${cut === -1 ? text : text.slice(0, cut)} ${suffix}`;
}
