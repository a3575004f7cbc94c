import { formatFixed, humanSize } from '../sizes.js';

const NS_PER_SEC = 1_000_000_000n;

/** A monotonic timestamp in nanoseconds, as qemu-io takes clock_gettime(CLOCK_MONOTONIC). */
export function now(): bigint {
  return process.hrtime.bigint();
}

/**
 * qemu-io's timestr(): "%05.2f sec" under a second, else "H:MM:SS.ss"; the verbose form (-C)
 * always "H:MM:SS.ss".
 */
export function formatElapsed(ns: bigint, verbose: boolean): string {
  const sec = ns / NS_PER_SEC;
  const frac = Number(ns % NS_PER_SEC) / 1e9;
  if (!verbose && sec === 0n) return `${formatFixed(frac, 2).padStart(5, '0')} sec`;
  const s = Number(sec);
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  return `${hours}:${String(minutes).padStart(2, '0')}:${formatFixed((s % 60) + frac, 2).padStart(5, '0')}`;
}

/** tdiv(): a count per second of the elapsed time. */
function perSecond(value: number, ns: bigint): number {
  return value / (Number(ns / NS_PER_SEC) + Number(ns % NS_PER_SEC) / 1e9);
}

/**
 * print_report(): for `read`, `wrote`, `discard`. Two lines,
 *   wrote 8192/8192 bytes at offset 4096
 *   8 KiB, 1 ops; 00.00 sec (8.561 MiB/sec and 1095.7451 ops/sec)
 * or with -C one machine-readable line "bytes,ops,time,bytes/sec,ops/sec".
 */
export function formatReport(op: string, ns: bigint, offset: number, count: number, total: number, ops: number, machine: boolean): string {
  const elapsed = formatElapsed(ns, machine);
  if (machine) {
    return `${total},${ops},${elapsed},${formatFixed(perSecond(total, ns), 3)},${formatFixed(perSecond(ops, ns), 3)}\n`;
  }
  return `${op} ${total}/${count} bytes at offset ${offset}\n`
    + `${humanSize(total)}, ${ops} ops; ${elapsed} (${humanSize(perSecond(total, ns))}/sec and ${formatFixed(perSecond(ops, ns), 4)} ops/sec)\n`;
}

/**
 * Matches the second line of a report, whose numbers are timings (the first line and the
 * "N KiB, 1 ops;" prefix are exact). Scripts and tests that compare output with qemu-io's mask
 * what this matches.
 */
export const TIMING_LINE = /^(\S+(?: \S+)?, \d+ ops; )(?:\d\d\.\d\d sec|\d+:\d\d:\d\d\.\d\d) \(\S+ \S+\/sec and \S+ ops\/sec\)$/;

/** The -C line, all of whose fields after the first two are timings. */
export const MACHINE_TIMING_LINE = /^(-?\d+,\d+,)\d+:\d\d:\d\d\.\d\d,[^,]+,[^,]+$/;
