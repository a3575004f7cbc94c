/**
 * Loader for the optional native addon (DESIGN.md §10, sources in native/).
 *
 * The addon supplies the few syscalls Node's fs lacks. It is optional: when it
 * is not built, cannot load (another OS, a failed `node-gyp rebuild`) or is
 * disabled with VDISK_NO_NATIVE=1, `native` is null, `nativeStatus.reason`
 * says why, and callers use their portable fallbacks (holes read as data,
 * zeroing writes zeros).
 *
 * Errors thrown or rejected by the addon are `Error`s with `.code` (errno name,
 * e.g. 'EOPNOTSUPP'), `.errno` (positive errno number) and `.syscall`, with a
 * message like `fallocate: Operation not supported`. Bad argument types throw
 * TypeError (code ERR_INVALID_ARG_TYPE / ERR_INVALID_ARG_VALUE); numbers that
 * are not non-negative safe integers throw RangeError (ERR_OUT_OF_RANGE).
 */
import { createRequire } from 'node:module';

export interface OfdLockHolder {
  type: 'read' | 'write';
  start: number;
  /** 0 = to end of file. */
  length: number;
  /** -1 when the conflicting lock is itself an OFD lock (it has no owning process). */
  pid: number;
}

export interface IoQueueHandle {
  /**
   * Queues requests [0, count): read or write all of buffers[i] at offsets[i] on fds[i];
   * kinds[i] bit 0 means write, bit 1 an O_DIRECT descriptor (buffered writes run at most two at
   * once; O_DIRECT requests always count as waiting for the device). Completions name ids[i].
   * The arrays are copied at once and may be reused.
   */
  submit(count: number, ids: Uint32Array, fds: Int32Array, offsets: Float64Array, kinds: Uint8Array, buffers: Uint8Array[]): void;
  /**
   * The caller stopped waiting for request `id`, still in flight (its storage did not answer in
   * time): it no longer keeps the process alive and close() does not wait for it. Its completion
   * still comes, once, if the system call ever returns; until then its buffer must stay alive.
   */
  abandon(id: number): void;
  /**
   * Stops the threads once their current requests finish (a thread stuck in an abandoned one is
   * left behind); later submits throw.
   */
  close(): void;
}

/** Options of the NBD server's native data plane (native/nbd-plane.cc). */
export interface NbdPlaneOptions {
  /** Export size in bytes. */
  size: number;
  structured: boolean;
  writable: boolean;
  /** Worker threads, started as requests back up. */
  threads: number;
  /** Forwarded requests at once, and their bytes, above which no request is read. */
  maxRequests: number;
  maxBufferedBytes: number;
  /** Longest READ or WRITE the threads serve themselves; longer ones are forwarded. */
  maxNativeLength: number;
  /** How long a client may keep its side open after the server's FIN. */
  lingerMs: number;
}

/** An event from the data plane: a forwarded request, a protocol violation, or the end. */
export type NbdPlaneEvent =
  | { event?: undefined; type: number; flags: number; cookieHigh: number; cookieLow: number; offsetHigh: number;
    offsetLow: number; offset: number; length: number; payload?: Buffer; charge: number }
  | { event: 'violation'; message: string }
  | { event: 'closed' };

export interface NbdPlaneHandle {
  /** A forwarded request's reply (copied at once) and the charge its request came with. */
  reply(buffers: Uint8Array[], charge: number): void;
  /** Read no more requests; answer those in hand, then close. */
  shutdown(): void;
  /** Close at once; replies not yet sent are dropped. */
  destroy(): void;
  /** [requests executing, reading (0/1), bytes held, most bytes held, reads and writes served through the cluster map] */
  stats(): Float64Array;
  /** Writes the plane has completed so far. */
  writes(): number;
  /** After the 'closed' event: joins the threads. */
  close(): void;
}

/** Where an export's guest clusters lie in its image file (native/nbd-cluster-map.h). */
export interface NbdClusterMapHandle {
  /** Raises a barrier (no plane read or write uses the map) and holds [offset, offset + length), its entries cleared. */
  hold(offset: number, length: number): void;
  /** Takes one hold's barrier down (its request is done); the range stays held. */
  lift(): void;
  /** Ends a hold (the same range). */
  release(offset: number, length: number): void;
  /** No plane read or write is using the map now. */
  idle(): boolean;
  generation(): number;
  /**
   * Maps `count` clusters from `firstCluster` onto host clusters from `hostOffset`; false when one was held since
   * `generation` or is held now by more than the caller's `ownHolds` (0, or 1 for a fill under its own request's hold).
   */
  set(generation: number, firstCluster: number, count: number, hostOffset: number, ownHolds: number): boolean;
  /** Marks those of the clusters that are mapped onto host clusters from `hostOffset` writable in place; false as set. */
  markWritable(generation: number, firstCluster: number, count: number, hostOffset: number, ownHolds: number): boolean;
}

export interface NativeAddon {
  /** lseek(SEEK_DATA): first data byte at or after offset; -1 on ENXIO (no data at/after offset). */
  seekData(fd: number, offset: number): number;
  /** lseek(SEEK_HOLE): first hole byte at or after offset (EOF counts as a hole); -1 on ENXIO. */
  seekHole(fd: number, offset: number): number;
  /** fallocate(2) on the thread pool; mode is a combination of FALLOC flags (0 = allocate). */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /** posix_fadvise(2); advice is one of FADV. */
  fadvise(fd: number, offset: number, length: number, advice: number): void;
  /** ioctl(FICLONE): make destFd share all of srcFd's extents (reflink). */
  ficlone(destFd: number, srcFd: number): Promise<void>;
  /** ioctl(FICLONERANGE); length 0 = to end of source. */
  ficloneRange(srcFd: number, srcOffset: number, length: number, destFd: number, destOffset: number): Promise<void>;
  /** fdatasync(2) on the thread pool. */
  fdatasync(fd: number): Promise<void>;
  /**
   * fcntl(F_OFD_SETLK), non-blocking; length 0 = to end of file. Returns false when
   * a conflicting lock is held (EAGAIN/EACCES), throws on any other error.
   */
  ofdSetLock(fd: number, type: 'read' | 'write' | 'unlock', start: number, length: number): boolean;
  /** fcntl(F_OFD_GETLK): null when the lock could be placed, else the conflicting lock. */
  ofdGetLock(fd: number, type: 'read' | 'write', start: number, length: number): null | OfdLockHolder;
  /** ioctl(BLKGETSIZE64): capacity of a block device in bytes. */
  blockDeviceSize(fd: number): number;
  /** ioctl(BLKSSZGET): logical sector size of a block device. */
  blockSectorSize(fd: number): number;
  /** True when every byte of the view is zero (any TypedArray or DataView). */
  isZero(buf: Uint8Array): boolean;
  /**
   * A zero-filled buffer whose memory starts on an `alignment`-byte boundary (a power of two
   * up to 1 MiB), for O_DIRECT I/O; the memory is freed when the buffer is garbage collected.
   */
  alignedBuffer(size: number, alignment: number): Uint8Array;
  /**
   * Many SEEK_DATA/SEEK_HOLE steps in one call: `[scannedTo, s0, e0, s1, e1, …]`. Every byte of
   * [offset, scannedTo) is described: the [s, e) runs are data, the rest holes. scannedTo < end
   * only when maxRuns runs were found.
   */
  mapData(fd: number, offset: number, end: number, maxRuns: number): Float64Array;
  /**
   * True where IoQueue takes map requests (kind 4): mapData's walk on the queue's threads, into
   * a buffer of doubles whose first holds the walk's end; the result is the doubles written.
   */
  readonly ioQueueMap?: boolean;
  /**
   * A queue of positional reads and writes served by up to `maxThreads` threads of its own
   * (started as requests back up, retired after 10 s idle). Each request
   * moves all of its buffer (a read stops short only at end of file); the caller keeps the buffer
   * referenced and untouched until `onComplete` reports the request's id with its result: bytes
   * moved, or -errno. Completions arrive in batches, one call per
   * event-loop wake-up. Only requests in flight keep the process alive.
   */
  /**
   * preadv2(RWF_NOWAIT) on the calling thread: all of `buffer` from `offset` when the page cache
   * holds it, else -1 (part of it would need the disk, the file ends inside it, or the file
   * system cannot tell); the caller then reads it through an IoQueue.
   */
  preadNowait(fd: number, buffer: Uint8Array, offset: number): number;
  /**
   * statx(STATX_DIOALIGN): [memoryAlignment, offsetAlignment] that O_DIRECT I/O on the file
   * needs ([0, 0]: no direct I/O on it), or null when the kernel or file system does not say.
   */
  dioAlignment(fd: number): [number, number] | null;
  /** Whether the view's first byte sits on an `alignment`-byte boundary (a power of two). */
  isAlignedBuffer(buffer: Uint8Array, alignment: number): boolean;
  /** sync_file_range(2) on the thread pool; flags from SYNC_FILE_RANGE; length 0 = to end of file. */
  syncFileRange(fd: number, offset: number, length: number, flags: number): Promise<void>;
  /**
   * copy_file_range(2) on the thread pool until all `length` bytes are copied (in the kernel,
   * page cache to page cache, or extents shared where the file system can). Rejects with
   * ENODATA when the source ends first; EXDEV, EINVAL, EOPNOTSUPP or ENOSYS when these files
   * cannot be copied this way. Optional: absent from builds before it (no interface bump).
   */
  copyFileRange?(srcFd: number, srcOffset: number, destFd: number, destOffset: number, length: number): Promise<void>;
  /**
   * The zero runs a sparse copy leaves as holes, `[s0, e0, s1, e1, …]` relative to the buffer:
   * blocks end at `first`, then every `granule` bytes; a run of all-zero blocks counts when it
   * is at least `minZero` long or touches an end (src/jobs/sparse-runs.ts). Optional, as above.
   */
  zeroRuns?(buf: Uint8Array, granule: number, first: number, minZero: number): Float64Array;
  /**
   * zeroRuns over a file's bytes [offset, offset + length), scanned through a read-only mapping
   * on the thread pool (no copy out of the page cache). Rejects with ENODATA when the file ends
   * before the range does, EIO when it shrinks during the scan. Optional, as above.
   */
  fileZeroRuns?(fd: number, offset: number, length: number, granule: number, first: number, minZero: number): Promise<Float64Array>;
  /** The interface version (see NATIVE_ABI). */
  readonly abi: number;
  /**
   * The NBD server's native data plane for one connection: serves READ and WRITE on `fileFd`
   * itself and forwards every other request. Both descriptors are duplicated.
   */
  NbdPlane: new (socketFd: number, fileFd: number, opts: NbdPlaneOptions, initial: Uint8Array, onEvents: (events: NbdPlaneEvent[]) => void,
    clusterMap?: NbdClusterMapHandle) => NbdPlaneHandle;
  /** A cluster map for NbdPlane: the plane reads mapped qcow2 clusters from the file itself. */
  NbdClusterMap: new (clusterSize: number, clusters: number) => NbdClusterMapHandle;
  IoQueue: new (maxThreads: number, onComplete: (ids: Uint32Array, results: Float64Array) => void) => IoQueueHandle;
}

/** fallocate(2) mode flags (Linux values; the addon's build asserts they match). */
export const FALLOC = Object.freeze({
  KEEP_SIZE: 1,
  PUNCH_HOLE: 2,
  ZERO_RANGE: 0x10,
  COLLAPSE_RANGE: 8,
  INSERT_RANGE: 0x20,
} as const);

/** posix_fadvise(2) advice (generic Linux numbering; the addon maps it per arch). */
export const FADV = Object.freeze({
  NORMAL: 0,
  RANDOM: 1,
  SEQUENTIAL: 2,
  WILLNEED: 3,
  DONTNEED: 4,
  NOREUSE: 5,
} as const);

/** sync_file_range(2) flags (Linux values; the addon's build asserts they match). */
export const SYNC_FILE_RANGE = Object.freeze({
  WAIT_BEFORE: 1,
  WRITE: 2,
  WAIT_AFTER: 4,
} as const);

/** Relative to this module: src/native/ and dist/native/ both sit two levels below the package root. */
const ADDON_PATH = '../../build/Release/vdisk_native.node';

/**
 * The interface version this loader speaks (kAbi in native/vdisk.cc): a build whose functions
 * have the right names but older meanings must not be used.
 */
const NATIVE_ABI = 5;

const REQUIRED: readonly (keyof NativeAddon)[] = [
  'seekData',
  'seekHole',
  'fallocate',
  'fadvise',
  'ficlone',
  'ficloneRange',
  'fdatasync',
  'ofdSetLock',
  'ofdGetLock',
  'blockDeviceSize',
  'blockSectorSize',
  'isZero',
  'alignedBuffer',
  'mapData',
  'IoQueue',
  'preadNowait',
  'dioAlignment',
  'isAlignedBuffer',
  'syncFileRange',
  'NbdPlane',
  'NbdClusterMap',
];

function disabledByEnv(): boolean {
  const v = process.env.VDISK_NO_NATIVE;
  return v !== undefined && v !== '' && v !== '0';
}

function load(): { addon: NativeAddon | null; status: { loaded: boolean; reason?: string } } {
  if (disabledByEnv()) {
    return {
      addon: null,
      status: { loaded: false, reason: `native addon disabled by VDISK_NO_NATIVE=${process.env.VDISK_NO_NATIVE}` },
    };
  }
  let mod: unknown;
  try {
    mod = createRequire(import.meta.url)(ADDON_PATH);
  } catch (err) {
    const msg = err instanceof Error ? err.message.split('\n')[0] : String(err);
    const hint =
      (err as NodeJS.ErrnoException)?.code === 'MODULE_NOT_FOUND'
        ? 'not built (`npm run install` builds it with node-gyp)'
        : 'failed to load';
    return { addon: null, status: { loaded: false, reason: `native addon ${hint}: ${msg}` } };
  }
  return validateAddon(mod);
}

/**
 * Accepts a loaded addon module, or says why not. A stale build from an older checkout may lack
 * newer functions, or keep their names with older meanings; either counts as absent rather than
 * failing (or misbehaving) later at a call site.
 */
export function validateAddon(mod: unknown): { addon: NativeAddon | null; status: { loaded: boolean; reason?: string } } {
  const missing = REQUIRED.filter((k) => typeof (mod as Record<string, unknown>)?.[k] !== 'function');
  const abi = (mod as { abi?: unknown })?.abi;
  if (missing.length === 0 && abi !== NATIVE_ABI) {
    return {
      addon: null,
      status: { loaded: false, reason: `native addon is out of date (interface ${String(abi ?? 1)}, want ${NATIVE_ABI}); rebuild it (npm run install)` },
    };
  }
  if (missing.length > 0) {
    return {
      addon: null,
      status: { loaded: false, reason: `native addon is out of date (missing ${missing.join(', ')}); rebuild it` },
    };
  }
  return { addon: mod as NativeAddon, status: { loaded: true } };
}

const result = load();

/** The addon, or null when it is unavailable (see nativeStatus.reason). */
export const native: NativeAddon | null = result.addon;

/** Whether the addon loaded and, if not, why. */
export const nativeStatus: { loaded: boolean; reason?: string } = Object.freeze(result.status);
