/* Numbers from the qcow2 specification (docs/interop/qcow2.rst); names follow QEMU's block/qcow2.h. */

export const QCOW2_MAGIC = 0x514649fb;
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** Extended L2 entries need 32 subclusters of at least 512 bytes. */
export const MIN_EXTENDED_L2_CLUSTER_BITS = 14;
export const V2_HEADER_LENGTH = 72;
export const V3_MIN_HEADER_LENGTH = 104;
/** What QEMU writes: the 104-byte v3 header, the compression-type byte and 7 bytes of padding. */
export const V3_HEADER_LENGTH = 112;
export const MAX_BACKING_FILE_NAME = 1023;

// Allocation caps QEMU enforces; a header asking for more is corrupt (or hostile).
export const MAX_L1_BYTES = 32 * 1024 * 1024;
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
export const MAX_SNAPSHOTS = 65536;
/** Host offsets must stay below 2^56; 2^53 is where JS numbers stop being exact. */
export const MAX_HOST_OFFSET = Number.MAX_SAFE_INTEGER;

export const INCOMPAT = { DIRTY: 1n << 0n, CORRUPT: 1n << 1n, DATA_FILE: 1n << 2n, COMPRESSION: 1n << 3n, EXTL2: 1n << 4n } as const;
export const INCOMPAT_KNOWN = 0x1fn;
export const COMPAT = { LAZY_REFCOUNTS: 1n << 0n } as const;
export const AUTOCLEAR = { BITMAPS: 1n << 0n, DATA_FILE_RAW: 1n << 1n } as const;
export const AUTOCLEAR_KNOWN = 0x3n;

export const EXT = {
  END: 0x00000000,
  BACKING_FORMAT: 0xe2792aca,
  FEATURE_TABLE: 0x6803f857,
  BITMAPS: 0x23852875,
  CRYPTO: 0x0537be77,
  DATA_FILE: 0x44415441,
} as const;

// Entry masks, as bigint because they use the top bits of 64-bit words.
export const L1E_OFFSET_MASK = 0x00fffffffffffe00n;
export const L1E_RESERVED_MASK = 0x7f000000000001ffn;
export const L2E_OFFSET_MASK = 0x00fffffffffffe00n;
export const L2E_STD_RESERVED_MASK = 0x3f000000000001fen;
export const REFT_OFFSET_MASK = 0xfffffffffffffe00n;
export const OFLAG_COPIED = 1n << 63n;
export const OFLAG_COMPRESSED = 1n << 62n;
export const OFLAG_ZERO = 1n;
export const SUBCLUSTERS = 32;
