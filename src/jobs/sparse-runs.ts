import { isAllZero } from '../core/zero-detect.js';

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
