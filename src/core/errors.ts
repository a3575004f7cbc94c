import { STRERROR } from './strerror.js';

/**
 * One error class for the whole stack. `code` is stable (errno-like) so callers, the CLI and the
 * NBD server can act on it without parsing messages.
 */
export type BlockErrorCode =
  | 'EIO' | 'EINVAL' | 'ENOSPC' | 'EROFS' | 'ENOTSUP' | 'ERANGE' | 'EPERM' | 'ENOENT' | 'EACCES'
  | 'ESHUTDOWN' | 'ETIMEDOUT' | 'EBUSY'
  | 'E_CORRUPT' | 'E_WRONG_FORMAT' | 'E_UNSUPPORTED_FEATURE' | 'E_ABORTED' | 'E_LOCKED';

export interface BlockErrorContext {
  node?: string;
  op?: string;
  offset?: number;
  length?: number;
  path?: string;
}

export class BlockError extends Error {
  override name = 'BlockError';
  readonly code: BlockErrorCode;
  readonly context: BlockErrorContext;

  constructor(code: BlockErrorCode, message: string, context: BlockErrorContext = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.context = context;
  }

  toJSON(): Record<string, unknown> {
    return {
      name: this.name,
      code: this.code,
      message: this.message,
      context: this.context,
      ...(this.cause instanceof Error ? { cause: this.cause.message } : {}),
    };
  }
}

/** Thrown by a driver hook that cannot do this particular request; the generic layer falls back. */
export class NotSupportedError extends BlockError {
  override name = 'NotSupportedError';
  constructor(message: string, context: BlockErrorContext = {}, options?: { cause?: unknown }) {
    super('ENOTSUP', message, context, options);
  }
}

const ERRNO_CODES: Record<string, BlockErrorCode> = {
  EIO: 'EIO', EINVAL: 'EINVAL', ENOSPC: 'ENOSPC', EDQUOT: 'ENOSPC', EROFS: 'EROFS',
  EOPNOTSUPP: 'ENOTSUP', ENOTSUP: 'ENOTSUP', ENOSYS: 'ENOTSUP', ENOTTY: 'ENOTSUP', EXDEV: 'ENOTSUP',
  ERANGE: 'ERANGE', EFBIG: 'ERANGE', EPERM: 'EPERM', EACCES: 'EACCES', ENOENT: 'ENOENT',
  ENOTDIR: 'ENOENT', EISDIR: 'EINVAL', ETIMEDOUT: 'ETIMEDOUT', EBUSY: 'EBUSY', EAGAIN: 'E_LOCKED',
};


/** Wraps a Node/addon system error (which carries `.code`) as a BlockError, keeping it as cause. */
export function fromSystemError(err: unknown, context: BlockErrorContext): BlockError {
  if (err instanceof BlockError) return err;
  const sys = err as NodeJS.ErrnoException;
  const errno = typeof sys?.code === 'string' ? sys.code : undefined;
  const code = (errno && ERRNO_CODES[errno]) || 'EIO';
  const words = (errno && STRERROR[errno]) || (sys?.message ?? String(err));
  const what = context.path ? `Could not ${context.op ?? 'access'} '${context.path}'` : `${context.op ?? 'I/O'} failed`;
  return code === 'ENOTSUP'
    ? new NotSupportedError(`${what}: ${words}`, context, { cause: err })
    : new BlockError(code, `${what}: ${words}`, context, { cause: err });
}

export function isNotSupported(err: unknown): boolean {
  return err instanceof BlockError && err.code === 'ENOTSUP';
}
