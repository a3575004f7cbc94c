import { qemuStrtosz } from '../sizes.js';
import type { Context } from './command.js';

const INT64_MAX = (1n << 63n) - 1n;

/** qemu's BDRV_REQUEST_MAX_BYTES: the largest single request qemu-io issues. */
export const REQUEST_MAX_BYTES = 2147483136n;

/**
 * qemu-io's cvtnum() plus print_cvtnum_err(): a size argument as an exact 64-bit value, or null
 * after printing the parsing error. Offsets stay bigint until checked against the image, so a
 * value past 2^53 is reported as qemu-io reports it instead of silently rounded.
 */
export function cvtnum(ctx: Context, text: string): bigint | null {
  const r = qemuStrtosz(text);
  if (r.ok && r.value <= INT64_MAX) {
    if (r.hexWithSuffix) ctx.warnReport(`Using a multiplier suffix on hex numbers is deprecated: ${text}`);
    return r.value;
  }
  if (!r.ok && r.error === 'EINVAL') {
    ctx.print(`Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}\n`);
  } else {
    ctx.print(`Parsing error: argument too large -- ${text}\n`);
  }
  return null;
}

const LONG_MAX = INT64_MAX;
const LONG_MIN = -(1n << 63n);

/**
 * glibc strtol(text, &end, 0): white space, a sign, 0x for hex, a leading 0 for octal; the value
 * saturates at LONG_MIN/LONG_MAX. `complete` is false when characters remain after the number.
 */
export function strtol(text: string): { value: bigint; complete: boolean } {
  let i = 0;
  while (i < text.length && ' \t\n\v\f\r'.includes(text[i]!)) i++;
  let negative = false;
  if (text[i] === '+' || text[i] === '-') negative = text[i++] === '-';
  let base = 10;
  if (text[i] === '0' && (text[i + 1] === 'x' || text[i + 1] === 'X') && /[0-9a-f]/i.test(text[i + 2] ?? '')) {
    base = 16;
    i += 2;
  } else if (text[i] === '0') {
    base = 8;
  }
  const start = i;
  let value = 0n;
  for (; i < text.length; i++) {
    const d = parseInt(text[i]!, 36);
    if (Number.isNaN(d) || d >= base) break;
    value = value * BigInt(base) + BigInt(d);
  }
  // No digits: no conversion, and end points back at the start of the text.
  if (i === start) return { value: 0n, complete: text.length === 0 };
  if (negative) value = -value;
  if (value > LONG_MAX) value = LONG_MAX;
  if (value < LONG_MIN) value = LONG_MIN;
  return { value, complete: i === text.length };
}
