import { BlockError, type BlockErrorCode } from '../../core/errors.js';
import { STRERROR } from '../../core/strerror.js';

/* qemu-io reports a failed request as "read failed: " + strerror(errno). */

/** vdisk's own codes as the errno QEMU returns in the same situation. */
const CODE_ERRNO: Partial<Record<BlockErrorCode, string>> = {
  E_CORRUPT: 'EIO',
  E_WRONG_FORMAT: 'EINVAL',
  E_UNSUPPORTED_FEATURE: 'ENOTSUP',
  E_ABORTED: 'ECANCELED',
  E_LOCKED: 'EAGAIN',
};

/** The errno name behind an error: the system call's own when a BlockError wraps one. */
export function errnoOf(err: unknown): string {
  const sys = err instanceof BlockError ? (err.cause as NodeJS.ErrnoException | undefined) : (err as NodeJS.ErrnoException);
  if (typeof sys?.code === 'string' && STRERROR[sys.code]) return sys.code;
  if (err instanceof BlockError) return CODE_ERRNO[err.code] ?? err.code;
  return 'EIO';
}

/** strerror() of that errno, as glibc words it. */
export function strerror(err: unknown): string {
  // qemu-io's line carries only strerror(); the cause is worth seeing when debugging.
  if (process.env.VDISK_DEBUG) process.stderr.write(`vdisk io: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  const errno = errnoOf(err);
  return STRERROR[errno] ?? errno;
}
