import { BlockError, type BlockErrorCode } from '../../core/errors.js';

/* qemu-io reports a failed request as "read failed: " + strerror(errno); these are glibc's words. */
const STRERROR: Record<string, string> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  EIO: 'Input/output error',
  ENXIO: 'No such device or address',
  EBADF: 'Bad file descriptor',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EACCES: 'Permission denied',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  EXDEV: 'Invalid cross-device link',
  ENODEV: 'No such device',
  ENOTDIR: 'Not a directory',
  EISDIR: 'Is a directory',
  EINVAL: 'Invalid argument',
  EMFILE: 'Too many open files',
  ENOTTY: 'Inappropriate ioctl for device',
  EFBIG: 'File too large',
  ENOSPC: 'No space left on device',
  ESPIPE: 'Illegal seek',
  EROFS: 'Read-only file system',
  EPIPE: 'Broken pipe',
  ERANGE: 'Numerical result out of range',
  ENOSYS: 'Function not implemented',
  ENOTSUP: 'Operation not supported',
  EOPNOTSUPP: 'Operation not supported',
  ECONNRESET: 'Connection reset by peer',
  ECONNREFUSED: 'Connection refused',
  ENOTCONN: 'Transport endpoint is not connected',
  ESHUTDOWN: 'Cannot send after transport endpoint shutdown',
  ETIMEDOUT: 'Connection timed out',
  EDQUOT: 'Disk quota exceeded',
  ECANCELED: 'Operation canceled',
  ENOMEDIUM: 'No medium found',
};

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
  const errno = errnoOf(err);
  return STRERROR[errno] ?? errno;
}
