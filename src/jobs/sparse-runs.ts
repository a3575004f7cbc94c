import { isAllZero } from '../core/zero-detect.js';
import { native } from '../native/index.js';

/** Part of a data buffer: written as data, or left sparse (zero). Offsets are in the target. */
export interface SparseRun {
  offset: number;
  length: number;
  zero: boolean;
}

/**
 * Splits `buf`, bound for the target at `offset`, into runs to write and runs to leave sparse,
 * as qemu-img convert's -S does. Zeros are looked for in `granule` blocks aligned in the target,
 * so that inside the buffer a sparse run never leaves a partial block to read-modify-write (a
 * partial block at either end of the buffer counts as a block of its own). A run of zero blocks
 * is left sparse when it is at least `minZero` bytes long, or when it touches an end of the
 * buffer, where skipping it splits no write.
 */
export function sparseRuns(buf: Uint8Array, offset: number, granule: number, minZero: number): SparseRun[] {
  const length = buf.byteLength;
  if (length === 0) return [];
  // The addon scans the whole buffer in one call: from JS, a call per 4 KiB block was ~8 % of
  // a copy's time.
  if (native?.zeroRuns) return withDataRuns(native.zeroRuns(buf, granule, firstBlock(offset, granule, length), minZero), offset, length);
  return sparseRunsInJs(buf, offset, granule, minZero);
}

/** sparseRuns without the addon. */
export function sparseRunsInJs(buf: Uint8Array, offset: number, granule: number, minZero: number): SparseRun[] {
  const length = buf.byteLength;
  if (length === 0) return [];
  if (isAllZero(buf)) return [{ offset, length, zero: true }];
  const runs: SparseRun[] = [];
  const push = (start: number, end: number, zero: boolean) => {
    const last = runs[runs.length - 1];
    if (last && last.zero === zero) last.length += end - start;
    else runs.push({ offset: offset + start, length: end - start, zero });
  };
  let runStart = 0;
  let runZero: boolean | undefined;
  const close = (end: number) => {
    if (runZero === undefined) return;
    const edge = runStart === 0 || end === length;
    push(runStart, end, runZero && (edge || end - runStart >= minZero));
  };
  for (let pos = 0; pos < length;) {
    const next = Math.min(length, (Math.floor((offset + pos) / granule) + 1) * granule - offset);
    // Most data blocks have a non-zero byte at one end: no view to make for them (this loop
    // sees every 4 KiB of a copy).
    const zero = buf[pos] === 0 && buf[next - 1] === 0 && isAllZero(buf.subarray(pos, next));
    if (zero !== runZero) {
      close(pos);
      [runStart, runZero] = [pos, zero];
    }
    pos = next;
  }
  close(length);
  return runs;
}

/** Where the first block of a buffer at target `offset` ends: the next granule boundary. */
export function firstBlock(offset: number, granule: number, length: number): number {
  return Math.min(length, granule - (offset % granule));
}

/**
 * The addon's answer (the sparse zero runs as [start, end) pairs relative to the buffer) as
 * SparseRuns covering all `length` bytes at target `offset`: data between the zero runs.
 */
export function withDataRuns(zeroRuns: Float64Array, offset: number, length: number): SparseRun[] {
  const runs: SparseRun[] = [];
  let pos = 0;
  for (let i = 0; i < zeroRuns.length; i += 2) {
    const [start, end] = [zeroRuns[i]!, zeroRuns[i + 1]!];
    if (start > pos) runs.push({ offset: offset + pos, length: start - pos, zero: false });
    runs.push({ offset: offset + start, length: end - start, zero: true });
    pos = end;
  }
  if (pos < length) runs.push({ offset: offset + pos, length: length - pos, zero: false });
  return runs;
}
