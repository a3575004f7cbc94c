import { BlockError, type BlockErrorCode } from '../../core/errors.js';
import { NBD_CMD_FLAG_FAST_ZERO } from './constants.js';

/*
 * The error values of simple replies and error chunks (spec §3.8): Linux errno numbers, whatever
 * the host. The server maps its failures onto them; the client maps them back.
 */

export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/** The errno name of each NBD error value, for messages. */
export const NBD_ERRNO_NAMES: Readonly<Record<number, string>> = {
  [NBD_EPERM]: 'EPERM', [NBD_EIO]: 'EIO', [NBD_ENOMEM]: 'ENOMEM', [NBD_EINVAL]: 'EINVAL', [NBD_ENOSPC]: 'ENOSPC',
  [NBD_EOVERFLOW]: 'EOVERFLOW', [NBD_ENOTSUP]: 'ENOTSUP', [NBD_ESHUTDOWN]: 'ESHUTDOWN',
};

/**
 * The NBD error for a failed request (the server's side). ENOTSUP only answers FAST_ZERO and
 * EOVERFLOW only DF, as the spec asks; everything the wire has no word for is EINVAL, except
 * plain I/O failures.
 */
export function nbdErrorFor(err: unknown, cmdFlags = 0): number {
  const code: BlockErrorCode | undefined = err instanceof BlockError ? err.code : undefined;
  switch (code) {
    case 'EPERM': case 'EROFS': case 'EACCES': return NBD_EPERM;
    case 'ENOSPC': case 'ERANGE': return NBD_ENOSPC;
    case 'EINVAL': return NBD_EINVAL;
    case 'ESHUTDOWN': return NBD_ESHUTDOWN;
    case 'ENOTSUP': return cmdFlags & NBD_CMD_FLAG_FAST_ZERO ? NBD_ENOTSUP : NBD_EINVAL;
    default: return NBD_EIO;
  }
}

/** The BlockError code a client raises for an NBD error value (unknown values are EINVAL, as the spec asks). */
export function blockCodeFor(nbdError: number): BlockErrorCode {
  switch (nbdError) {
    case NBD_EPERM: return 'EPERM';
    case NBD_EIO: return 'EIO';
    case NBD_ENOMEM: return 'EIO';
    case NBD_ENOSPC: return 'ENOSPC';
    case NBD_EOVERFLOW: return 'EINVAL';
    case NBD_ENOTSUP: return 'ENOTSUP';
    case NBD_ESHUTDOWN: return 'ESHUTDOWN';
    default: return 'EINVAL';
  }
}
