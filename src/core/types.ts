/** The public device API (DESIGN.md §2). Offsets and lengths are safe-integer byte counts. */

export interface IoOptions {
  signal?: AbortSignal;
}

export interface WriteOptions extends IoOptions {
  /** Force Unit Access: the data is on stable storage when the promise resolves. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** The range may be deallocated (punched) as long as it reads back as zeros. */
  mayUnmap?: boolean;
  /** NBD FAST_ZERO: fail with ENOTSUP rather than fall back to writing zero buffers. */
  noFallback?: boolean;
  /** Reserve zeroed space cheaply (fallocate) or fail with ENOTSUP; never a slow fallback. */
  allocate?: boolean;
}

export interface BlockLimits {
  /** Every request that reaches a driver hook is aligned to this (power of two). */
  requestAlignment: number;
  /** Largest request passed to a read/write hook (multiple of requestAlignment). */
  maxTransfer: number;
  /** Preferred request size for throughput (0: no preference). */
  optTransfer: number;
  /** Zero-write hooks get ranges aligned to this where possible. */
  zeroAlignment: number;
  maxWriteZeroes: number;
  /** Discard hooks get ranges aligned to this; unaligned heads and tails are left alone. */
  discardAlignment: number;
  maxDiscard: number;
  /** Required alignment of buffer addresses (O_DIRECT); 1 when any buffer will do. */
  memoryAlignment: number;
}

export type OpSupport = 'none' | 'emulate' | 'native';

export interface Capabilities {
  writable: boolean;
  flush: boolean;
  fua: OpSupport;
  zero: OpSupport;
  discard: OpSupport;
  /** The zero path can honour noFallback (NBD FAST_ZERO) by failing fast. */
  fastZero: boolean;
  blockStatus: boolean;
  /** Several connections may share this device and see each other's flushed writes. */
  multiConn: boolean;
  resize: boolean;
}

/**
 * Where one run of the device lives (QEMU block_status). `depth` counts backing hops: 0 is this
 * node; a range unallocated in the whole chain has depth = chain length and `present` false.
 */
export interface Extent {
  offset: number;
  length: number;
  /** Reads return data stored in some layer (not known to be zero). */
  data: boolean;
  /** Reads are known to return zeros. */
  zero: boolean;
  /** Allocated in some layer of the chain (false: no layer has it; it reads as zeros). */
  present: boolean;
  depth: number;
  compressed?: boolean;
  /** Byte offset in the host file of the node that holds the range, where known. */
  hostOffset?: number;
  /** Name of the node/file that `hostOffset` refers to. */
  hostFile?: string;
}

export interface BlockDevice extends AsyncDisposable {
  readonly size: number;
  readonly limits: BlockLimits;
  readonly caps: Capabilities;
  read(offset: number, into: Uint8Array, opts?: IoOptions): Promise<void>;
  write(offset: number, data: Uint8Array, opts?: WriteOptions): Promise<void>;
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void>;
  discard(offset: number, length: number, opts?: IoOptions): Promise<void>;
  flush(opts?: IoOptions): Promise<void>;
  blockStatus(offset: number, maxLength: number, opts?: IoOptions): Promise<Extent>;
  extents(offset: number, length: number, opts?: IoOptions): AsyncIterable<Extent>;
  resize?(size: number): Promise<void>;
  close(): Promise<void>;
}

export type DetectZeroes = 'off' | 'on' | 'unmap';

/** QEMU's discard=: discard requests deallocate (unmap) or succeed doing nothing (ignore). */
export type DiscardMode = 'ignore' | 'unmap';
