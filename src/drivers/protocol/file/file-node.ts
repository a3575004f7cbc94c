import { constants as fsc, promises as fsp } from 'node:fs';
import { BlockNode, type NodeOptions } from '../../../core/block-node.js';
import { BlockError, fromSystemError, NotSupportedError } from '../../../core/errors.js';
import { alignUp, isPowerOfTwo } from '../../../core/limits.js';
import type { Extent, IoOptions, WriteOptions, ZeroOptions } from '../../../core/types.js';
import { FADV, FALLOC, native } from '../../../native/index.js';
import { applyLocks, PERM, permissionsFor } from './locking.js';
import { cloneDataRuns } from './clone-range.js';
import { DataMap } from './data-map.js';
import { EvictBehind } from './evict-behind.js';
import { preadFull, pwriteFull } from './fd-io.js';
import { queuedMap, queuedMapData } from './io-queue.js';
import { isUnsupportedErrno, zeroRange } from './zero-range.js';

/** QEMU's cache modes: which of the host page cache and flushes are used. */
export type CacheMode = 'writeback' | 'writethrough' | 'none' | 'directsync' | 'unsafe';

export interface FileOptions extends NodeOptions {
  filename: string;
  cache?: CacheMode;
  /** 'auto' locks when the OFD-lock syscalls are available. */
  locking?: 'auto' | 'on' | 'off';
  /** Force a larger request alignment (tests of read-modify-write; 4 KiB-sector emulation). */
  requestAlignment?: number;
  /** Create the file if it does not exist (used by `create`). */
  create?: boolean;
  /**
   * Let no other process write or resize the file while it is open (QEMU's format nodes ask
   * this of their file). Without it, writers share the file as qemu-io's do on raw images.
   */
  exclusive?: boolean;
  /**
   * How cache=none and directsync keep the page cache out: O_DIRECT (true, the default), or
   * buffered I/O whose pages are dropped behind it (false; GNU dd's `nocache`). The second is
   * also what they fall back to where the file system refuses O_DIRECT.
   */
  direct?: boolean;
  /**
   * Seconds a read or write may take before it fails with ETIMEDOUT (vdisk's --timeout): on a
   * dead NFS or FUSE mount the system call never returns, and is left behind. 0 or absent: as
   * long as the kernel takes, as QEMU waits.
   */
  timeout?: number;
}

/** O_DIRECT alignment where the file system does not say (statx STATX_DIOALIGN): the largest common logical block. */
const DIRECT_ALIGNMENT = 4096;
const SECTOR = 512;
/**
 * How long holes from a batched walk are trusted when other processes may write the file. A
 * live answer is just as stale by the time it is used; the bound keeps a cached one from
 * growing old. QEMU caches data runs only; we keep holes briefly so a map stays linear.
 */
const SHARED_HOLE_TTL_MS = 200;
/** Data runs one batched hole walk collects. */
const DATA_MAP_RUNS = 4096;

/** Regular files and block devices, with the sparse-file syscalls of the native addon. */
export class FileNode extends BlockNode {
  readonly driver = 'file';
  private readonly path: string;
  private readonly fh: fsp.FileHandle;
  private readonly isBlockDevice: boolean;
  private readonly cache: CacheMode;
  /** We hold QEMU's lock that keeps other writers out, so cached holes stay holes. */
  private readonly exclusive: boolean;
  /** The last batched hole walk; dropped whenever we change the file. */
  private dataMap: DataMap | undefined;
  /** A buffered descriptor for the unaligned tail of an O_DIRECT file (see handleFor). */
  private tailFh: Promise<fsp.FileHandle> | undefined;
  /** Offset and length alignment of O_DIRECT I/O; 0 when the file is not open O_DIRECT. */
  private readonly directAlignment: number;
  /** Uncached without O_DIRECT: pages are dropped behind the I/O. */
  private readonly evict: EvictBehind | undefined;
  /** Deadline of each read and write in ms; 0: none. */
  readonly timeoutMs: number;
  /** A request missed its deadline: the storage may never answer again (see _close). */
  private stuck = false;

  private constructor(opts: FileOptions, f: OpenedFile) {
    super(opts);
    this.path = opts.filename;
    this.fh = f.fh;
    this.isBlockDevice = f.isBlockDevice;
    this.cache = opts.cache ?? 'writeback';
    this.exclusive = f.exclusive;
    this.size = f.size;
    this.directAlignment = f.direct?.offset ?? 0;
    this.evict = isUncached(this.cache) && !f.direct ? new EvictBehind(native!, f.fh.fd) : undefined;
    this.timeoutMs = (opts.timeout ?? 0) * 1000;
    const align = Math.max(opts.requestAlignment ?? 1, this.directAlignment);
    this.limits = { ...this.limits, requestAlignment: align, memoryAlignment: f.direct?.memory ?? 1, optTransfer: 1024 * 1024 };
  }

  static async open(opts: FileOptions): Promise<FileNode> {
    const path = opts.filename;
    const ctx = { op: 'open', path };
    if (typeof path !== 'string' || path === '') throw new BlockError('EINVAL', 'A filename is required', ctx);
    if (opts.requestAlignment !== undefined && !isPowerOfTwo(opts.requestAlignment)) {
      throw new BlockError('EINVAL', `request-alignment must be a power of two, not ${opts.requestAlignment}`, ctx);
    }
    const cache = opts.cache ?? 'writeback';
    const uncached = isUncached(cache);
    if (uncached && !native) {
      throw new NotSupportedError(`cache=${cache} needs aligned buffers from the native addon, which is not loaded`, ctx);
    }
    let flags = opts.readOnly ? fsc.O_RDONLY : fsc.O_RDWR;
    if (opts.create && !opts.readOnly) flags |= fsc.O_CREAT;
    const opened = await openUncached(path, flags, uncached && opts.direct !== false, ctx);
    let fh = opened.fh;
    let direct: OpenedFile['direct'];
    try {
      const st = await fh.stat();
      if (st.isDirectory()) throw new BlockError('EINVAL', `Could not open '${path}': Is a directory`, ctx);
      const isBlockDevice = st.isBlockDevice();
      // QEMU counts images in whole sectors: a file's tail past EOF reads as zeros and a write
      // there extends the file. Matching it keeps sizes and maps identical to qemu-img's.
      let size = alignUp(st.size, SECTOR);
      if (isBlockDevice) {
        if (!native) throw new NotSupportedError(`Block devices need the native addon, which is not loaded`, ctx);
        size = native.blockDeviceSize(fh.fd);
      }
      if (opened.direct) {
        direct = directAlignment(fh.fd, isBlockDevice);
        // Opened O_DIRECT, yet the file takes no direct I/O (ext4 with data=journal, encrypted
        // or verity files serve it buffered): drop pages behind the I/O instead. Node has no
        // fcntl to clear the flag, so the file is opened again.
        if (!direct) {
          const buffered = (await openUncached(path, flags, false, ctx)).fh;
          await fh.close();
          fh = buffered;
        }
      }
      const locking = opts.locking ?? 'auto';
      if (locking === 'on' && !native) throw new NotSupportedError('locking=on needs the native addon, which is not loaded', ctx);
      const { perm, shared } = permissionsFor(!opts.readOnly, opts.exclusive ?? false);
      const locked = locking !== 'off' && native !== null;
      if (locked) await applyLocks(native!, fh.fd, path, perm, shared);
      // While we hold a lock that shares no WRITE, no cooperating process writes the file.
      return new FileNode({ ...opts, cache }, { fh, size, isBlockDevice, exclusive: locked && (shared & PERM.WRITE) === 0, direct });
    } catch (err) {
      await fh.close();
      throw err instanceof BlockError ? err : fromSystemError(err, ctx);
    }
  }

  override get filename(): string {
    return this.path;
  }

  /** The underlying descriptor, for syscalls such as reflink that work across two files. */
  get fd(): number {
    return this.fh.fd;
  }

  /** QEMU's cache mode this file was opened with. */
  get cacheMode(): CacheMode {
    return this.cache;
  }

  /** Another writer of this descriptor changed the file (the NBD server's native data plane): cached holes may be data now. */
  dropCachedHoles(): void {
    this.dataMap = undefined;
  }

  override get writesWaitForDevice(): boolean {
    return this.directAlignment > 0;
  }

  /** How cache=none/directsync is kept: O_DIRECT, or pages dropped behind the I/O; undefined for cached modes. */
  get uncachedBy(): 'o-direct' | 'evict-behind' | undefined {
    return this.directAlignment > 0 ? 'o-direct' : this.evict ? 'evict-behind' : undefined;
  }

  /**
   * posix_fadvise(DONTNEED): drop the range's clean pages from the host page cache. For callers
   * that read or write through the cache and want it spared behind a copy window; dirty pages
   * stay until written back (flush first to drop those too). Advice only: without the addon,
   * or where the file system ignores it, nothing happens.
   */
  adviseDontNeed(offset: number, length: number): void {
    if (!native || this.fh.fd < 0) return;
    try {
      native.fadvise(this.fh.fd, offset, length, FADV.DONTNEED);
    } catch {
      // Advice: the data is the same either way.
    }
  }

  /**
   * Reflink (FICLONERANGE): [dstOffset, dstOffset + length) of this file comes to share the
   * extents of `src` at [srcOffset, srcOffset + length); no bytes move and no space is used
   * until one side is written. Only data runs are cloned: the source's holes stay holes here,
   * left alone when `targetIsZero`, punched otherwise. Throws NotSupportedError where these
   * files cannot share extents (ext4, two file systems, ranges off the file system's blocks),
   * for the caller to copy instead. Returns the bytes cloned (the source's data in the range).
   */
  async cloneRange(src: FileNode, srcOffset: number, dstOffset: number, length: number, opts: { targetIsZero?: boolean } = {}): Promise<number> {
    const ctx = { ...this.ctx('clone', dstOffset, length), source: src.filename };
    if (this.fh.fd < 0 || src.fd < 0) throw new BlockError('ESHUTDOWN', 'clone on a closed image', ctx);
    if (this.readOnly) throw new BlockError('EROFS', 'Image is read-only', ctx);
    const valid = (n: number) => Number.isSafeInteger(n) && n >= 0;
    if (!valid(srcOffset) || !valid(dstOffset) || !valid(length) || srcOffset + length > src.size || dstOffset + length > this.size) {
      throw new BlockError('ERANGE', `clone of ${length} bytes from offset ${srcOffset} (size ${src.size}) to offset ${dstOffset} is outside the images (size ${this.size})`, ctx);
    }
    if (!native) throw new NotSupportedError('Cloning needs the native addon, which is not loaded', ctx);
    // FICLONERANGE runs on libuv's pool, where a dead mount would hold it past any deadline.
    if (this.timeoutMs > 0 || src.timeoutMs > 0) throw new NotSupportedError('a clone cannot be bounded by a timeout; the data is copied instead', ctx);
    const hole = (offset: number, n: number) => opts.targetIsZero ? Promise.resolve() : this.writeZeroes(offset, n, { mayUnmap: true });
    this.dataMap = undefined;
    try {
      return await cloneDataRuns(native, { srcFd: src.fd, dstFd: this.fh.fd, srcOffset, dstOffset, length, hole, ctx });
    } finally {
      this.dataMap = undefined;
    }
  }

  override async allocatedSize(): Promise<number | undefined> {
    if (this.isBlockDevice) return undefined;
    const st = await this.fh.stat();
    return st.blocks * 512;
  }

  protected override get nativeFua(): boolean {
    return this.cache === 'writethrough' || this.cache === 'directsync';
  }

  protected async _read(offset: number, into: Uint8Array): Promise<void> {
    const handle = this.handleFor(into.byteLength);
    const fh = handle instanceof Promise ? await handle : handle;
    const buf = fh === this.fh ? this.ioBuffer(into) : into;
    let done = 0;
    try {
      done = await preadFull(fh.fd, buf, offset, fh === this.fh && this.directAlignment > 0, this.timeoutMs);
    } catch (err) {
      throw this.ioError(err, 'read', offset, into.byteLength);
    }
    // A file that shrank under us reads as zeros past its end, as a hole would.
    if (done < buf.byteLength) buf.fill(0, done);
    if (buf !== into) into.set(buf);
    this.evict?.afterRead(offset, into.byteLength);
  }

  protected override async _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    this.dataMap = undefined;
    const handle = this.handleFor(data.byteLength);
    const fh = handle instanceof Promise ? await handle : handle;
    const buf = fh === this.fh ? this.ioBuffer(data, true) : data;
    try {
      await pwriteFull(fh.fd, buf, offset, fh === this.fh && this.directAlignment > 0, this.timeoutMs);
      await this.evict?.afterWrite(offset, data.byteLength);
      if (opts.fua || this.cache === 'writethrough' || this.cache === 'directsync') await fh.datasync();
    } catch (err) {
      throw this.ioError(err, 'write', offset, data.byteLength);
    } finally {
      // A walk made while this write was in flight may have seen a hole where the data now is;
      // holes are cached, so drop it again (stale "data" answers are harmless, stale holes not).
      this.dataMap = undefined;
    }
  }

  /** A failed read or write as a BlockError; a missed deadline says which (strerror would say "Connection timed out"). */
  private ioError(err: unknown, op: 'read' | 'write' | 'block-status', offset: number, length: number): BlockError {
    const ctx = this.ctx(op, offset, length);
    if ((err as NodeJS.ErrnoException).code !== 'ETIMEDOUT' || !this.timeoutMs) return fromSystemError(err, ctx);
    this.stuck = true;
    const what = op === 'block-status' ? 'find the data in' : op;
    return new BlockError('ETIMEDOUT', `Could not ${what} '${this.path}': no answer within ${this.timeoutMs / 1000} s (ETIMEDOUT)`, ctx, { cause: err });
  }

  /** Zeroing with fallocate alone (see zeroRange); ENOTSUP lets the generic layer write zero buffers. */
  protected override async _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    this.dataMap = undefined;
    const ctx = this.ctx('write-zeroes', offset, length);
    if (!native) throw new NotSupportedError('fallocate is not available without the native addon', ctx);
    await zeroRange(native, {
      fd: this.fh.fd, offset, length, mayUnmap: !!opts.mayUnmap, allocate: !!opts.allocate, noFallback: !!opts.noFallback,
      blockDevice: this.isBlockDevice, fileEnd: this.size, ctx,
    });
    return this.afterZero(opts, ctx);
  }

  private async afterZero(opts: ZeroOptions, ctx: Record<string, unknown>): Promise<void> {
    if (!(opts.fua || this.cache === 'writethrough' || this.cache === 'directsync')) return;
    try {
      await this.fh.datasync();
    } catch (err) {
      throw fromSystemError(err, ctx);
    }
  }

  protected override async _discard(offset: number, length: number, _opts: IoOptions): Promise<void> {
    this.dataMap = undefined;
    if (!native) return;
    try {
      await native.fallocate(this.fh.fd, FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE, offset, length);
    } catch (err) {
      if (!isUnsupportedErrno(err)) throw fromSystemError(err, this.ctx('discard', offset, length));
    }
  }

  protected override async _flush(): Promise<void> {
    if (this.cache === 'unsafe') return;
    try {
      await this.fh.datasync();
      await this.evict?.drain();
    } catch (err) {
      throw fromSystemError(err, this.ctx('flush'));
    }
  }

  /**
   * SEEK_DATA/SEEK_HOLE: holes read as zeros; everything in the file is present at depth 0.
   * The walk is batched in the addon and kept in a DataMap until we change the file.
   */
  protected override async _blockStatusList(offset: number, maxLength: number): Promise<Extent[]> {
    if (!native || this.isBlockDevice) return [this.extent(offset, maxLength, true)];
    const end = offset + maxLength;
    let hit = this.dataMap?.lookup(offset, end);
    if (!hit) {
      try {
        // With a deadline (--timeout) the walk goes to the I/O threads, where a dead mount
        // holds a thread rather than the event loop; without one it runs here, a syscall
        // cheaper than a thread hop.
        const found = this.timeoutMs > 0 && queuedMap
          ? await queuedMapData(this.fh.fd, offset, this.size, DATA_MAP_RUNS, this.timeoutMs)
          : native.mapData(this.fh.fd, offset, this.size, DATA_MAP_RUNS);
        this.dataMap = new DataMap(offset, Math.max(found[0]!, offset), found.subarray(1), this.exclusive ? Infinity : SHARED_HOLE_TTL_MS);
      } catch (err) {
        if (isUnsupportedErrno(err)) return [this.extent(offset, maxLength, true)];
        throw this.ioError(err, 'block-status', offset, maxLength);
      }
      hit = this.dataMap.lookup(offset, end, true);
      // No answer (the file shrank under us): data is the answer that is never wrong.
      if (!hit) return [this.extent(offset, maxLength, true)];
    }
    const list = [this.extent(offset, hit.length, hit.data)];
    // Everything else this walk saw up to `end`, while it can still be trusted.
    for (let pos = offset + hit.length; pos < end && list.length < DATA_MAP_RUNS;) {
      const next = this.dataMap!.lookup(pos, end);
      if (!next) break;
      list.push(this.extent(pos, next.length, next.data));
      pos += next.length;
    }
    return list;
  }

  // A literal, not a spread: block status runs once per extent, and spreading costs ten times more.
  private extent(offset: number, length: number, data: boolean): Extent {
    return { offset, length, data, zero: !data, present: true, depth: 0, hostOffset: offset, hostFile: this.path };
  }

  protected override async _resize(size: number): Promise<void> {
    this.dataMap = undefined;
    if (this.isBlockDevice) throw new NotSupportedError('block devices cannot be resized', this.ctx('resize'));
    try {
      await this.fh.truncate(size);
    } catch (err) {
      throw fromSystemError(err, this.ctx('resize'));
    }
  }

  protected override async _close(): Promise<void> {
    const tail = this.tailFh;
    this.tailFh = undefined;
    if (this.stuck) {
      // Its storage did not answer in time: closing may wait as long (a FUSE flush queues behind
      // the reads still held), so the descriptors go without waiting, errors unheard.
      void this.fh.close().catch(() => undefined);
      void tail?.then((fh) => fh.close()).catch(() => undefined);
      return;
    }
    try {
      // Pages still in the window are dropped; a writeback error they hit is this close's error.
      await this.evict?.drain();
    } catch (err) {
      throw fromSystemError(err, this.ctx('close'));
    } finally {
      try {
        await this.fh.close();
      } finally {
        // A tail handle that failed to open has nothing to close.
        if (tail) await tail.then((fh) => fh.close(), () => undefined);
      }
    }
  }

  /*
   * O_DIRECT needs lengths aligned as well as offsets. The only request the generic layer passes
   * with an unaligned length is the partial block at the end of a file whose size is not a
   * multiple of the alignment; it goes through a second, buffered descriptor (Linux keeps
   * buffered and direct I/O to one file coherent) rather than padding past the end of the file.
   */
  private handleFor(length: number): fsp.FileHandle | Promise<fsp.FileHandle> {
    if (this.directAlignment === 0 || length % this.directAlignment === 0) return this.fh;
    this.tailFh ??= fsp.open(this.path, this.readOnly ? fsc.O_RDONLY : fsc.O_RDWR).catch((err) => {
      this.tailFh = undefined;
      throw fromSystemError(err, this.ctx('open'));
    });
    return this.tailFh;
  }

  /** O_DIRECT wants buffer addresses aligned too; copy a misaligned one through a bounce buffer. */
  private ioBuffer(buf: Uint8Array, copyIn = false): Uint8Array {
    const align = this.limits.memoryAlignment;
    if (align <= 1 || !native || native.isAlignedBuffer(buf, align)) return buf;
    const aligned = native.alignedBuffer(buf.byteLength, align);
    if (copyIn) aligned.set(buf);
    return aligned;
  }
}

interface OpenedFile {
  fh: fsp.FileHandle;
  size: number;
  isBlockDevice: boolean;
  /** We hold a lock that keeps other writers out. */
  exclusive: boolean;
  /** Open O_DIRECT, with the alignments its I/O needs. */
  direct: { memory: number; offset: number } | undefined;
}

function isUncached(cache: CacheMode): boolean {
  return cache === 'none' || cache === 'directsync';
}

/**
 * Opens with O_DIRECT when asked and the file system takes it; where it refuses (EINVAL: ramfs,
 * some FUSE and network file systems), buffered, and the caller drops pages behind the I/O.
 */
async function openUncached(path: string, flags: number, direct: boolean, ctx: Record<string, unknown>): Promise<{ fh: fsp.FileHandle; direct: boolean }> {
  try {
    return { fh: await fsp.open(path, direct ? flags | fsc.O_DIRECT : flags, 0o644), direct };
  } catch (err) {
    if (!direct || (err as NodeJS.ErrnoException).code !== 'EINVAL') throw fromSystemError(err, ctx);
  }
  return openUncached(path, flags, false, ctx);
}

/**
 * The alignment O_DIRECT I/O on this file needs: the file system's answer (statx DIOALIGN, Linux
 * 6.1+), else a block device's logical sector, else 4096, which covers every common logical
 * block size. undefined: the file takes no direct I/O.
 */
function directAlignment(fd: number, isBlockDevice: boolean): { memory: number; offset: number } | undefined {
  let dio: [number, number] | null = null;
  try {
    dio = native!.dioAlignment(fd);
  } catch {
    // An error asking is no answer; the defaults below are safe.
  }
  if (dio) return dio[1] === 0 ? undefined : { memory: Math.max(dio[0], 1), offset: dio[1] };
  const sector = isBlockDevice ? native!.blockSectorSize(fd) : DIRECT_ALIGNMENT;
  return { memory: sector, offset: sector };
}
