import { fromSystemError, NotSupportedError, type BlockErrorContext } from '../../../core/errors.js';
import { FALLOC, type NativeAddon } from '../../../native/index.js';

export interface ZeroRange {
  fd: number;
  offset: number;
  length: number;
  /** The range may become a hole (still reading as zeros). */
  mayUnmap: boolean;
  /** The range must end up allocated (reserved) and reading as zeros, cheaply, or not at all. */
  allocate: boolean;
  /** Fail rather than let anything write zeros the slow way (NBD FAST_ZERO). */
  noFallback: boolean;
  blockDevice: boolean;
  /** Where the file ended before this request: a range wholly past it can simply be allocated. */
  fileEnd: number;
  ctx: BlockErrorContext;
}

/**
 * Zeroes a range of a file or block device with fallocate alone, as QEMU's file-posix does:
 * punch a hole where unmapping is allowed (cheapest), else ZERO_RANGE (allocated, reading
 * zeros), else, past the end of the file, plain allocation (new space reads zeros), else punch
 * and allocate again. Throws NotSupportedError when none of these applies; the generic
 * layer then writes zero buffers, unless the caller forbade that (noFallback, allocate).
 *
 * An `allocate` request never punches without allocating again, and on a block device a
 * request that must not fall back tries nothing but the punch: the kernel zeroes a device's
 * ZERO_RANGE by writing zero pages where the device has no cheap way (BLKDEV_ZERO_NOUNMAP
 * without NOFALLBACK), which is exactly the slow fallback the caller ruled out.
 */
export async function zeroRange(addon: NativeAddon, z: ZeroRange): Promise<void> {
  const attempt = (mode: number) => fallocate(addon, z, mode);
  const punch = FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE;
  if (z.mayUnmap && !z.allocate && (await attempt(punch))) return;
  if (z.blockDevice) {
    if (!z.noFallback && !z.allocate && (await attempt(FALLOC.ZERO_RANGE))) return;
    throw new NotSupportedError('the device cannot zero this range without writing zeros', z.ctx);
  }
  if (await attempt(FALLOC.ZERO_RANGE)) return;
  // Without ZERO_RANGE (tmpfs, ext2 without extents): space past the end of the file reads
  // zeros once allocated; elsewhere a hole punched and allocated again does, at no data
  // writes. Plain allocation is tried first, keeping the size: it changes no byte, so where
  // the file system lacks it the refusal leaves the data intact instead of punched.
  if (z.offset >= z.fileEnd) {
    if (await attempt(0)) return;
  } else if ((await attempt(FALLOC.KEEP_SIZE)) && (await attempt(punch)) && (await attempt(0))) {
    return;
  }
  throw new NotSupportedError('the file system cannot zero ranges efficiently', z.ctx);
}

/** One fallocate; false when the file system does not support this mode, throws on a real error. */
async function fallocate(addon: NativeAddon, z: ZeroRange, mode: number): Promise<boolean> {
  try {
    await addon.fallocate(z.fd, mode, z.offset, z.length);
    return true;
  } catch (err) {
    if (isUnsupportedErrno(err)) return false;
    throw fromSystemError(err, z.ctx);
  }
}

/** Errors that mean "not this way" rather than "it went wrong" (EINVAL: misbehaving file systems reject ranges they could punch). */
export function isUnsupportedErrno(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS' || code === 'EINVAL' || code === 'ENOTTY';
}
