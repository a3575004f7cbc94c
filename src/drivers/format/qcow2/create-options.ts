import { BlockError } from '../../../core/errors.js';
import type { CreateOption, CreateRequest } from '../../../registry/driver.js';
import { MAX_BACKING_FILE_NAME, MAX_CLUSTER_BITS, MAX_L1_BYTES, MIN_CLUSTER_BITS, MIN_EXTENDED_L2_CLUSTER_BITS } from './constants.js';

/*
 * `-o` options of `create`, parsed and checked the way qemu-img 7.2 does it (block/qcow2.c
 * qcow2_co_create and the QemuOpts/QAPI parsers in front of it): the same accepted spellings, the
 * same defaults, the same checks in the same order, and QEMU's own words for the errors.
 */

export const QCOW2_CREATE_OPTIONS: readonly CreateOption[] = [
  { name: 'cluster_size', type: 'size', default: '65536' },
  { name: 'extended_l2', type: 'bool', default: 'off' },
  { name: 'preallocation', type: 'string' },
  { name: 'compression_type', type: 'string', default: 'zlib' },
  { name: 'size', type: 'size' },
  { name: 'compat', type: 'string' },
  { name: 'backing_file', type: 'string' },
  { name: 'backing_fmt', type: 'string' },
  { name: 'data_file', type: 'string' },
  { name: 'data_file_raw', type: 'bool' },
  { name: 'lazy_refcounts', type: 'bool', default: 'off' },
  { name: 'refcount_bits', type: 'number', default: '16' },
];

export type Qcow2Preallocation = 'off' | 'metadata' | 'falloc' | 'full';

/** A create request, validated: everything the layout needs, defaults filled in. */
export interface Qcow2CreateParams {
  filename: string;
  /** Virtual size, already rounded up to 512 bytes. */
  size: number;
  version: 2 | 3;
  clusterBits: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: 0 | 1;
  preallocation: Qcow2Preallocation;
  dataFile: string | undefined;
  dataFileRaw: boolean;
  backingFile: string | undefined;
  backingFormat: string | undefined;
}

const SECTOR = 512;
const SIZE_SUFFIXES: Record<string, number> = { b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

function invalid(filename: string, message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'create', path: filename });
}

/** qemu_strtosz: decimal (a fraction only with a unit) or hex, then an optional unit b k M G T P E. */
export function parseQemuSize(text: string): number | undefined {
  const m = /^\s*(?:(0[xX][0-9a-fA-F]+)|(\d+)(\.\d+)?)\s*([bBkKmMgGtTpPeE])?$/.exec(text);
  if (!m) return undefined;
  const unit = SIZE_SUFFIXES[(m[4] ?? 'b').toLowerCase()]!;
  if (m[1] !== undefined) {
    const v = Number.parseInt(m[1].slice(2), 16) * unit;
    return Number.isSafeInteger(v) ? v : undefined;
  }
  if (m[3] !== undefined && unit === 1) return undefined;
  const v = Math.floor(Number(m[2] + (m[3] ?? '')) * unit);
  return Number.isSafeInteger(v) ? v : undefined;
}

/** qemu_strtou64 with base 0: decimal, 0x hex or 0 octal, an optional sign (a minus wraps around). */
function parseQemuNumber(text: string): { value: number; negative: boolean } | undefined {
  const m = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)$/.exec(text);
  if (!m) return undefined;
  const digits = m[2]!;
  const value = /^0[xX]/.test(digits) ? Number.parseInt(digits.slice(2), 16)
    : digits.length > 1 && digits.startsWith('0') ? Number.parseInt(digits.slice(1), 8) : Number(digits);
  return { value, negative: m[1] === '-' && value !== 0 };
}

/** QEMU's boolean option spellings (qapi_bool_parse). */
function parseQemuBool(filename: string, key: string, text: string | undefined): boolean {
  if (text === undefined) return false;
  if (text === 'on' || text === 'yes' || text === 'true' || text === 'y') return true;
  if (text === 'off' || text === 'no' || text === 'false' || text === 'n') return false;
  throw invalid(filename, `Parameter '${key}' expects 'on' or 'off'`);
}

function parseEnum<T extends string>(filename: string, key: string, text: string | undefined, values: readonly T[], fallback: T): T {
  if (text === undefined) return fallback;
  if ((values as readonly string[]).includes(text)) return text as T;
  throw invalid(filename, `Parameter '${key}' does not accept value '${text}' (${values.join(', ')})`);
}

/** Number of L1 entries QEMU gives an image of `size` bytes (size_to_l1 in block/qcow2.h). */
export function l1EntriesFor(size: number, clusterBits: number, extendedL2: boolean): number {
  const l2Bits = clusterBits - (extendedL2 ? 4 : 3);
  return Math.ceil(size / 2 ** (clusterBits + l2Bits));
}

/**
 * Checks a create request and fills in QEMU's defaults. Throws a one-line BlockError('EINVAL')
 * for the first problem, in the order qemu-img reports them; never touches a file.
 */
export function parseQcow2CreateRequest(req: CreateRequest): Qcow2CreateParams {
  const { filename } = req;
  const o = req.options;
  for (const key of Object.keys(o)) {
    if (!QCOW2_CREATE_OPTIONS.some((o) => o.name === key)) throw invalid(filename, `Invalid parameter '${key}'`);
  }
  if (!Number.isSafeInteger(req.size) || req.size < 0) {
    throw invalid(filename, `Invalid image size specified. Must be between 0 and ${Number.MAX_SAFE_INTEGER}.`);
  }
  // Option syntax first (QEMU's option parsers run before qcow2_co_create looks at any value).
  let clusterSize = 65536;
  if (o.cluster_size !== undefined) {
    const v = parseQemuSize(o.cluster_size);
    if (v === undefined) {
      throw invalid(filename, "Parameter 'cluster_size' expects a non-negative number below 2^64 (optional suffix k, M, G, T, P or E)");
    }
    clusterSize = v;
  }
  let refcountBits = 16;
  if (o.refcount_bits !== undefined) {
    const n = parseQemuNumber(o.refcount_bits);
    if (n === undefined) throw invalid(filename, "Parameter 'refcount_bits' expects a number");
    refcountBits = n.negative ? Number.MAX_SAFE_INTEGER : n.value;
  }
  const lazyRefcounts = parseQemuBool(filename, 'lazy_refcounts', o.lazy_refcounts);
  const extendedL2 = parseQemuBool(filename, 'extended_l2', o.extended_l2);
  const dataFileRaw = parseQemuBool(filename, 'data_file_raw', o.data_file_raw);
  const compat = o.compat;
  if (compat !== undefined && !['0.10', '1.1', 'v2', 'v3'].includes(compat)) {
    throw invalid(filename, `Invalid compatibility level: '${compat}' (0.10 or 1.1)`);
  }
  const version: 2 | 3 = compat === '0.10' || compat === 'v2' ? 2 : 3;
  let preallocation = parseEnum(filename, 'preallocation', o.preallocation, ['off', 'metadata', 'falloc', 'full'] as const, 'off');
  const compression = parseEnum(filename, 'compression_type', o.compression_type, ['zlib', 'zstd'] as const, 'zlib');
  const backingFile = o.backing_file;
  if (backingFile === '') throw invalid(filename, 'Expected backing file name, got empty string');
  const backingFormat = o.backing_fmt;
  if (backingFormat === '') throw invalid(filename, "Unknown driver ''");
  const dataFile = o.data_file;
  if (dataFile === '') throw invalid(filename, 'Expected data file name, got empty string');

  // qemu-img itself refuses a backing file whose format it would have to guess (bdrv_img_create).
  if (backingFile !== undefined && backingFormat === undefined) {
    throw invalid(filename, 'Backing file specified without backing format');
  }

  // The checks of qcow2_co_create, in its order.
  const size = Math.ceil(req.size / SECTOR) * SECTOR;
  if (extendedL2 && version < 3) {
    throw invalid(filename, 'Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const clusterBits = Math.log2(clusterSize);
  if (!Number.isInteger(clusterBits) || clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw invalid(filename, `Cluster size must be a power of two between ${2 ** MIN_CLUSTER_BITS} and ${2 ** (MAX_CLUSTER_BITS - 10)}k`);
  }
  if (extendedL2 && clusterBits < MIN_EXTENDED_L2_CLUSTER_BITS) {
    throw invalid(filename, `Extended L2 entries are only supported with cluster sizes of at least ${2 ** MIN_EXTENDED_L2_CLUSTER_BITS} bytes`);
  }
  if (backingFile !== undefined && preallocation !== 'off' && !extendedL2) {
    throw invalid(filename, 'Backing file and preallocation can only be used at the same time if extended_l2 is on');
  }
  if (backingFormat !== undefined && backingFile === undefined) {
    throw invalid(filename, 'Backing format cannot be used without backing file');
  }
  if (version < 3 && lazyRefcounts) {
    throw invalid(filename, 'Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const refcountOrder = Math.log2(refcountBits);
  if (refcountBits > 64 || !Number.isInteger(refcountOrder)) {
    throw invalid(filename, 'Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (version < 3 && refcountBits !== 16) {
    throw invalid(filename, 'Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)');
  }
  if (dataFileRaw && dataFile === undefined) throw invalid(filename, 'data-file-raw requires data-file');
  if (dataFileRaw && backingFile !== undefined) throw invalid(filename, 'Backing file and data-file-raw cannot be used at the same time');
  // The data file must read as the whole disk, so its L1/L2 tables must map it 1:1.
  if (dataFileRaw && preallocation === 'off') preallocation = 'metadata';
  if (dataFile !== undefined && version < 3) {
    throw invalid(filename, 'External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  if (compression === 'zstd' && version < 3) {
    throw invalid(filename, 'Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  if (backingFile !== undefined && Buffer.byteLength(backingFile) > MAX_BACKING_FILE_NAME) {
    throw invalid(filename, `Could not assign backing file '${backingFile}': the name is longer than ${MAX_BACKING_FILE_NAME} bytes`);
  }
  // QEMU fails growing the L1 table with EFBIG, which qemu-img words like this.
  if (l1EntriesFor(size, clusterBits, extendedL2) * 8 > MAX_L1_BYTES) {
    throw invalid(filename, "The image size is too large for file format 'qcow2' (try using a larger cluster size)");
  }
  return {
    filename, size, version, clusterBits, refcountOrder, lazyRefcounts, extendedL2,
    compressionType: compression === 'zstd' ? 1 : 0, preallocation, dataFile, dataFileRaw, backingFile, backingFormat,
  };
}
