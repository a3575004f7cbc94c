import { BlockError, type BlockErrorCode } from '../core/errors.js';

/**
 * The NBD wire protocol's numbers (NetworkBlockDevice `doc/proto.md`; specs/nbd.md), shared by
 * the server (src/nbd/server) and the client (src/nbd/client). Every integer on the wire is
 * big-endian; 64-bit fields are bigint here so no value ever passes through a 32-bit bitwise op.
 */

export const NBD_DEFAULT_PORT = 10809;

// ---- magic numbers ---------------------------------------------------------------------------
export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const NBD_EXTENDED_REQUEST_MAGIC = 0x21e41c71;
export const NBD_EXTENDED_REPLY_MAGIC = 0x6e8a278c;

// ---- handshake flags -------------------------------------------------------------------------
/** Server → client, 16 bits. */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client → server, 32 bits. */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// ---- options ---------------------------------------------------------------------------------
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

// ---- option replies --------------------------------------------------------------------------
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
/** Every error reply type has bit 31 set. */
export const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = 0x80000001;
export const NBD_REP_ERR_POLICY = 0x80000002;
export const NBD_REP_ERR_INVALID = 0x80000003;
export const NBD_REP_ERR_PLATFORM = 0x80000004;
export const NBD_REP_ERR_TLS_REQD = 0x80000005;
export const NBD_REP_ERR_UNKNOWN = 0x80000006;
export const NBD_REP_ERR_SHUTDOWN = 0x80000007;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
export const NBD_REP_ERR_TOO_BIG = 0x80000009;
export const NBD_REP_ERR_EXT_HEADER_REQD = 0x8000000a;

// ---- NBD_REP_INFO types ----------------------------------------------------------------------
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ---- transmission flags (16 bits) ------------------------------------------------------------
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// ---- commands and command flags --------------------------------------------------------------
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// ---- structured replies ----------------------------------------------------------------------
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
/** Every error chunk type has bit 15 set. */
export const NBD_REPLY_TYPE_FLAG_ERROR = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

// ---- base:allocation ---------------------------------------------------------------------------
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
/** qemu:allocation-depth: 0 unallocated, 1 this layer, n the (n-1)th backing layer. */
export const CONTEXT_BASE_ALLOCATION = 'base:allocation';
export const CONTEXT_QEMU_ALLOCATION_DEPTH = 'qemu:allocation-depth';

// ---- header sizes ----------------------------------------------------------------------------
export const OPTION_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
/** The longest string the spec allows (export names, descriptions, context names). */
export const NBD_MAX_STRING = 4096;

// ---- errors ----------------------------------------------------------------------------------
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/**
 * The NBD error for a failed request. ENOTSUP only answers FAST_ZERO and EOVERFLOW only DF, as
 * the spec asks; everything the wire has no word for is EINVAL, except plain I/O failures.
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

/** The BlockError code a client raises for an NBD error value (unknown values are EINVAL). */
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

// ---- fixed headers -----------------------------------------------------------------------------

export interface Request {
  flags: number;
  type: number;
  /** Eight opaque bytes chosen by the client, echoed in every reply. */
  cookie: bigint;
  offset: bigint;
  length: number;
}

export function encodeRequest(r: Request, into = Buffer.allocUnsafe(REQUEST_HEADER_SIZE)): Buffer {
  into.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  into.writeUInt16BE(r.flags, 4);
  into.writeUInt16BE(r.type, 6);
  into.writeBigUInt64BE(r.cookie, 8);
  into.writeBigUInt64BE(r.offset, 16);
  into.writeUInt32BE(r.length, 24);
  return into;
}

/** The request header at `at`, or undefined when its magic is wrong. */
export function decodeRequest(b: Buffer, at = 0): Request | undefined {
  if (b.readUInt32BE(at) !== NBD_REQUEST_MAGIC) return undefined;
  return {
    flags: b.readUInt16BE(at + 4),
    type: b.readUInt16BE(at + 6),
    cookie: b.readBigUInt64BE(at + 8),
    offset: b.readBigUInt64BE(at + 16),
    length: b.readUInt32BE(at + 24),
  };
}

export function encodeSimpleReply(error: number, cookie: bigint, into = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE)): Buffer {
  into.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  into.writeUInt32BE(error, 4);
  into.writeBigUInt64BE(cookie, 8);
  return into;
}

export interface ChunkHeader {
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

export function encodeChunkHeader(h: ChunkHeader, into = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE)): Buffer {
  into.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  into.writeUInt16BE(h.flags, 4);
  into.writeUInt16BE(h.type, 6);
  into.writeBigUInt64BE(h.cookie, 8);
  into.writeUInt32BE(h.length, 16);
  return into;
}

export function encodeOptionHeader(option: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(OPTION_HEADER_SIZE);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(length, 12);
  return b;
}

export function encodeOptionReplyHeader(option: number, type: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(length, 16);
  return b;
}

/** Names for messages and logs. */
export const OPTION_NAMES: Record<number, string> = {
  [NBD_OPT_EXPORT_NAME]: 'NBD_OPT_EXPORT_NAME', [NBD_OPT_ABORT]: 'NBD_OPT_ABORT', [NBD_OPT_LIST]: 'NBD_OPT_LIST',
  [NBD_OPT_PEEK_EXPORT]: 'NBD_OPT_PEEK_EXPORT', [NBD_OPT_STARTTLS]: 'NBD_OPT_STARTTLS', [NBD_OPT_INFO]: 'NBD_OPT_INFO',
  [NBD_OPT_GO]: 'NBD_OPT_GO', [NBD_OPT_STRUCTURED_REPLY]: 'NBD_OPT_STRUCTURED_REPLY',
  [NBD_OPT_LIST_META_CONTEXT]: 'NBD_OPT_LIST_META_CONTEXT', [NBD_OPT_SET_META_CONTEXT]: 'NBD_OPT_SET_META_CONTEXT',
  [NBD_OPT_EXTENDED_HEADERS]: 'NBD_OPT_EXTENDED_HEADERS',
};

export const COMMAND_NAMES: Record<number, string> = {
  [NBD_CMD_READ]: 'NBD_CMD_READ', [NBD_CMD_WRITE]: 'NBD_CMD_WRITE', [NBD_CMD_DISC]: 'NBD_CMD_DISC',
  [NBD_CMD_FLUSH]: 'NBD_CMD_FLUSH', [NBD_CMD_TRIM]: 'NBD_CMD_TRIM', [NBD_CMD_CACHE]: 'NBD_CMD_CACHE',
  [NBD_CMD_WRITE_ZEROES]: 'NBD_CMD_WRITE_ZEROES', [NBD_CMD_BLOCK_STATUS]: 'NBD_CMD_BLOCK_STATUS',
};
