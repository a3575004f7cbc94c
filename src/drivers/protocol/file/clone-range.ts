import { fromSystemError, NotSupportedError, type BlockErrorContext } from '../../../core/errors.js';
import { STRERROR } from '../../../core/strerror.js';
import type { NativeAddon } from '../../../native/index.js';

/** Data runs one SEEK_DATA/SEEK_HOLE batch collects. */
const RUNS_PER_WALK = 4096;

export interface CloneRuns {
  srcFd: number;
  dstFd: number;
  srcOffset: number;
  dstOffset: number;
  length: number;
  /** The destination range that must read as zeros because the source has a hole there. */
  hole: (dstOffset: number, length: number) => Promise<void>;
  /** For errors: where the clone reads from and writes to. */
  ctx: BlockErrorContext & { source: string };
}

/**
 * FICLONERANGE over the data runs of the source range only: cloning a hole would be no cheaper
 * and, on some file systems, allocates it; so holes stay holes and are left to `hole`. Ends
 * when the range is done or throws: NotSupportedError when these file systems cannot share
 * these extents (ext4, two file systems, offsets not on file system blocks), so that a caller
 * can copy instead; runs before the failing one are cloned already, which copying redoes.
 * Returns the bytes cloned (the data runs').
 */
export async function cloneDataRuns(native: NativeAddon, c: CloneRuns): Promise<number> {
  const end = c.srcOffset + c.length;
  const shift = c.dstOffset - c.srcOffset;
  let pos = c.srcOffset;
  let cloned = 0;
  while (pos < end) {
    let found: Float64Array;
    try {
      found = native.mapData(c.srcFd, pos, end, RUNS_PER_WALK);
    } catch (err) {
      throw fromSystemError(err, { ...c.ctx, op: 'clone', path: c.ctx.source, offset: pos });
    }
    for (let i = 1; i < found.length; i += 2) {
      const start = found[i]!;
      const stop = found[i + 1]!;
      if (start > pos) await c.hole(pos + shift, start - pos);
      await ficlone(native, c, start, stop - start);
      cloned += stop - start;
      pos = stop;
    }
    const scannedTo = Math.min(Math.max(found[0]!, pos), end);
    if (scannedTo > pos) await c.hole(pos + shift, scannedTo - pos);
    // Every batch describes at least one run or reaches `end`: the walk always advances.
    pos = Math.max(pos, scannedTo);
  }
  return cloned;
}

/** What the clone ioctl answers when it cannot share these extents; the bytes must be copied. */
const CANNOT_CLONE = new Set(['EOPNOTSUPP', 'ENOTSUP', 'EXDEV', 'ENOTTY', 'ENOSYS', 'EINVAL']);

async function ficlone(native: NativeAddon, c: CloneRuns, srcOffset: number, length: number): Promise<void> {
  const dstOffset = srcOffset + c.dstOffset - c.srcOffset;
  try {
    await native.ficloneRange(c.srcFd, srcOffset, length, c.dstFd, dstOffset);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException)?.code ?? '';
    const ctx = { ...c.ctx, op: 'clone', offset: dstOffset, length };
    if (!CANNOT_CLONE.has(code)) throw fromSystemError(err, ctx);
    // EINVAL comes from the remap checks: offsets or length off the file system's blocks (or a
    // file system whose clone takes no ranges).
    const why = code === 'EINVAL' ? "the ranges are not aligned to the file system's blocks" : STRERROR[code] ?? code;
    throw new NotSupportedError(`Could not clone '${c.ctx.source}' into '${c.ctx.path}': ${why}`, ctx, { cause: err });
  }
}
