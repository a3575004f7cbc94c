import { constants as fsc, promises as fsp } from 'node:fs';
import { BlockNode, type NodeOptions } from '../../../core/block-node.js';
import { BlockError, fromSystemError, NotSupportedError } from '../../../core/errors.js';
import { alignUp, isPowerOfTwo } from '../../../core/limits.js';
import type { Extent, IoOptions, WriteOptions, ZeroOptions } from '../../../core/types.js';
import { FALLOC, native } from '../../../native/index.js';
import { applyLocks, PERM, permissionsFor } from './locking.js';
import { DataMap } from './data-map.js';
import { preadFull, pwriteFull } from './fd-io.js';

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
}

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

  private constructor(opts: FileOptions, fh: fsp.FileHandle, size: number, isBlockDevice: boolean, exclusive: boolean) {
    super(opts);
    this.path = opts.filename;
    this.fh = fh;
    this.isBlockDevice = isBlockDevice;
    this.cache = opts.cache ?? 'writeback';
    this.exclusive = exclusive;
    this.size = size;
    const direct = this.cache === 'none' || this.cache === 'directsync';
    const align = Math.max(opts.requestAlignment ?? 1, direct ? DIRECT_ALIGNMENT : 1);
    this.limits = { ...this.limits, requestAlignment: align, memoryAlignment: direct ? DIRECT_ALIGNMENT : 1, optTransfer: 1024 * 1024 };
  }

  static async open(opts: FileOptions): Promise<FileNode> {
    const path = opts.filename;
    const ctx = { op: 'open', path };
    if (typeof path !== 'string' || path === '') throw new BlockError('EINVAL', 'A filename is required', ctx);
    if (opts.requestAlignment !== undefined && !isPowerOfTwo(opts.requestAlignment)) {
      throw new BlockError('EINVAL', `request-alignment must be a power of two, not ${opts.requestAlignment}`, ctx);
    }
    const cache = opts.cache ?? 'writeback';
    const direct = cache === 'none' || cache === 'directsync';
    if (direct && !native) {
      throw new NotSupportedError(`cache=${cache} needs aligned buffers from the native addon, which is not loaded`, ctx);
    }
    let flags = opts.readOnly ? fsc.O_RDONLY : fsc.O_RDWR;
    if (opts.create && !opts.readOnly) flags |= fsc.O_CREAT;
    if (direct) flags |= fsc.O_DIRECT;
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(path, flags, 0o644);
    } catch (err) {
      throw fromSystemError(err, ctx);
    }
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
      const locking = opts.locking ?? 'auto';
      if (locking === 'on' && !native) throw new NotSupportedError('locking=on needs the native addon, which is not loaded', ctx);
      const { perm, shared } = permissionsFor(!opts.readOnly, opts.exclusive ?? false);
      const locked = locking !== 'off' && native !== null;
      if (locked) await applyLocks(native!, fh.fd, path, perm, shared);
      // While we hold a lock that shares no WRITE, no cooperating process writes the file.
      return new FileNode({ ...opts, cache }, fh, size, isBlockDevice, locked && (shared & PERM.WRITE) === 0);
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
      done = await preadFull(fh.fd, buf, offset);
    } catch (err) {
      throw fromSystemError(err, this.ctx('read', offset, into.byteLength));
    }
    // A file that shrank under us reads as zeros past its end, as a hole would.
    if (done < buf.byteLength) buf.fill(0, done);
    if (buf !== into) into.set(buf);
  }

  protected override async _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    this.dataMap = undefined;
    const handle = this.handleFor(data.byteLength);
    const fh = handle instanceof Promise ? await handle : handle;
    const buf = fh === this.fh ? this.ioBuffer(data, true) : data;
    try {
      await pwriteFull(fh.fd, buf, offset);
      if (opts.fua || this.cache === 'writethrough' || this.cache === 'directsync') await fh.datasync();
    } catch (err) {
      throw fromSystemError(err, this.ctx('write', offset, data.byteLength));
    } finally {
      // A walk made while this write was in flight may have seen a hole where the data now is;
      // holes are cached, so drop it again (stale "data" answers are harmless, stale holes not).
      this.dataMap = undefined;
    }
  }

  /*
   * Zeroing as QEMU's file-posix does it: punch when unmapping is allowed (cheapest, leaves a
   * hole), else ZERO_RANGE (allocated, reads zero), else punch and re-allocate. Anything else
   * is ENOTSUP and the generic layer writes zero buffers, unless the caller forbade that. Block
   * devices take the same calls: since Linux 4.9 fallocate zeroes through the device, and
   * refuses rather than writing zeros itself when the device cannot do it cheaply.
   */
  protected override async _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    this.dataMap = undefined;
    const ctx = this.ctx('write-zeroes', offset, length);
    if (!native) throw new NotSupportedError('fallocate is not available without the native addon', ctx);
    const fd = this.fh.fd;
    const attempts: number[] = opts.mayUnmap && !opts.allocate
      ? [FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE, FALLOC.ZERO_RANGE]
      : [FALLOC.ZERO_RANGE];
    let lastErr: unknown;
    for (const mode of attempts) {
      try {
        await native.fallocate(fd, mode, offset, length);
        return await this.afterZero(opts, ctx);
      } catch (err) {
        if (!isUnsupportedErrno(err)) throw fromSystemError(err, ctx);
        lastErr = err;
      }
    }
    try {
      await native.fallocate(fd, FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE, offset, length);
      await native.fallocate(fd, 0, offset, length);
      return await this.afterZero(opts, ctx);
    } catch (err) {
      if (!isUnsupportedErrno(err)) throw fromSystemError(err, ctx);
      lastErr = err;
    }
    throw new NotSupportedError('the file system cannot zero ranges efficiently', ctx, { cause: lastErr });
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
        const found = native.mapData(this.fh.fd, offset, this.size, DATA_MAP_RUNS);
        this.dataMap = new DataMap(offset, Math.max(found[0]!, offset), found.subarray(1), this.exclusive ? Infinity : SHARED_HOLE_TTL_MS);
      } catch (err) {
        if (isUnsupportedErrno(err)) return [this.extent(offset, maxLength, true)];
        throw fromSystemError(err, this.ctx('block-status', offset, maxLength));
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
    try {
      await this.fh.close();
    } finally {
      // A tail handle that failed to open has nothing to close.
      if (tail) await tail.then((fh) => fh.close(), () => undefined);
    }
  }

  /*
   * O_DIRECT needs lengths aligned as well as offsets. The only request the generic layer passes
   * with an unaligned length is the partial block at the end of a file whose size is not a
   * multiple of the alignment; it goes through a second, buffered descriptor (Linux keeps
   * buffered and direct I/O to one file coherent) rather than padding past the end of the file.
   */
  private handleFor(length: number): fsp.FileHandle | Promise<fsp.FileHandle> {
    if (this.limits.memoryAlignment <= 1 || length % DIRECT_ALIGNMENT === 0) return this.fh;
    this.tailFh ??= fsp.open(this.path, this.readOnly ? fsc.O_RDONLY : fsc.O_RDWR).catch((err) => {
      this.tailFh = undefined;
      throw fromSystemError(err, this.ctx('open'));
    });
    return this.tailFh;
  }

  /** O_DIRECT wants buffer addresses aligned too; copy through an aligned bounce buffer. */
  private ioBuffer(buf: Uint8Array, copyIn = false): Uint8Array {
    const align = this.limits.memoryAlignment;
    if (align <= 1 || !native) return buf;
    const aligned = native.alignedBuffer(buf.byteLength, align);
    if (copyIn) aligned.set(buf);
    return aligned;
  }
}

function isUnsupportedErrno(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS' || code === 'EINVAL' || code === 'ENOTTY';
}
