import { EventEmitter } from 'node:events';
import { BlockError, isNotSupported, NotSupportedError } from './errors.js';
import { RequestTracker } from './request-tracker.js';
import type {
  BlockDevice, BlockLimits, Capabilities, DetectZeroes, DiscardMode, Extent, IoOptions, WriteOptions, ZeroOptions,
} from './types.js';
import { isAllZero, zeroBuffer } from './zero-detect.js';
import { alignDown, alignUp, defaultLimits } from './limits.js';

export interface NodeOptions {
  /** QEMU's node-name; generated when absent. */
  nodeName?: string;
  readOnly?: boolean;
  /**
   * Writes past the end extend the node (a format's file child: qcow2 grows its file). A node
   * a guest writes directly must not grow, or a guest could extend its disk by writing past it.
   */
  growable?: boolean;
  detectZeroes?: DetectZeroes;
}

/** Largest zero buffer the write-zeroes fallback writes at once. */
const ZERO_FALLBACK_CHUNK = 1024 * 1024;
/** The options of a request that passes none: one shared object instead of one per call. */
const NO_OPTIONS: WriteOptions = Object.freeze({});

let nodeCounter = 0;

/**
 * The generic block layer (DESIGN.md §3). It implements the public API once: range and state
 * checks, splitting at maxTransfer, alignment by read-modify-write under request serialisation,
 * zero-write fallback, FUA emulation and detect-zeroes. Drivers override the protected hooks only,
 * and a hook may assume its request is in range, aligned and allowed.
 */
export abstract class BlockNode implements BlockDevice {
  abstract readonly driver: string;
  readonly nodeName: string;
  readonly readOnly: boolean;
  private readonly growable: boolean;
  detectZeroes: DetectZeroes;
  /** QEMU's discard=: with 'ignore', discard requests succeed without reaching the driver. */
  discardMode: DiscardMode = 'unmap';
  limits: BlockLimits = defaultLimits();
  /** Children by role (`file`, `backing`, `data-file`); this node owns and closes them. */
  readonly children = new Map<string, BlockNode>();
  /** Named debug events (`l2.load`, `cluster.alloc`, …) for tracing and fault injection. */
  readonly events = new EventEmitter();

  private _size = 0;
  private capsCache: Capabilities | undefined;
  private readonly tracker = new RequestTracker();
  private inFlight = 0;
  private idle: (() => void)[] = [];
  private state: 'open' | 'closing' | 'closed' = 'open';
  private closing: Promise<void> | undefined;
  /** Set while resize() changes the size; new requests wait for it. */
  private resizing: Promise<void> | undefined;

  protected abstract _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void>;
  protected _write?(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void>;
  protected _writeZeroes?(offset: number, length: number, opts: ZeroOptions): Promise<void>;
  protected _discard?(offset: number, length: number, opts: IoOptions): Promise<void>;
  protected _flush?(opts: IoOptions): Promise<void>;
  protected _blockStatus?(offset: number, maxLength: number, opts: IoOptions): Promise<Extent>;
  /**
   * Several consecutive extents from `offset` in one call (at least one). Optional: drivers that
   * learn many runs at once (a batched hole walk, an NBD block-status reply) pass them up whole,
   * so a walk over a big sparse image crosses each layer once per batch instead of per extent.
   */
  protected _blockStatusList?(offset: number, maxLength: number, opts: IoOptions): Promise<Extent[]>;
  protected _resize?(size: number): Promise<void>;
  protected _close?(): Promise<void>;

  /** True when the write hooks honour `fua` themselves; otherwise the layer flushes after them. */
  protected get nativeFua(): boolean {
    return false;
  }

  constructor(opts: NodeOptions = {}) {
    this.nodeName = opts.nodeName ?? `#block${++nodeCounter}`;
    this.readOnly = opts.readOnly ?? false;
    this.growable = opts.growable ?? false;
    this.detectZeroes = opts.detectZeroes ?? 'off';
  }

  get size(): number {
    return this._size;
  }

  protected set size(size: number) {
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new BlockError('EINVAL', `Invalid image size ${size}`, { node: this.nodeName });
    }
    this._size = size;
  }

  get file(): BlockNode | undefined {
    return this.children.get('file');
  }

  get backing(): BlockNode | undefined {
    return this.children.get('backing');
  }

  /** The path or URL this node's bytes come from, for messages and `info`. */
  get filename(): string {
    return this.file?.filename ?? '';
  }

  /**
   * Whether a write here waits for the device (O_DIRECT) rather than copying into a cache: a
   * caller that would hold a lock around a data write (qcow2's cluster allocation) writes outside
   * it then. A format passes its file's answer up.
   */
  get writesWaitForDevice(): boolean {
    return this.file?.writesWaitForDevice ?? false;
  }

  /** Bytes the image takes on its storage (`actual-size`), when the storage can tell. */
  async allocatedSize(): Promise<number | undefined> {
    return this.file?.allocatedSize();
  }

  /**
   * Further top-level facts for `info`, under qemu-img's JSON names (`cluster-size`,
   * `backing-filename`, `snapshots`, `dirty-flag` …).
   */
  imageInfo(): Record<string, unknown> {
    return {};
  }

  /**
   * Whether QEMU's bdrv_get_info would answer for this node (`info` shows `dirty-flag` only then):
   * a driver without its own asks its file child, as QEMU's raw format does; protocol drivers
   * that have none (nbd) say no.
   */
  hasDriverInfo(): boolean {
    return this.file?.hasDriverInfo() ?? true;
  }

  /**
   * Where the format keeps a saved VM state (QEMU's `vm_state_offset`, which qemu-io's `info`
   * prints); 0 for formats that cannot hold one.
   */
  vmStateOffset(): number {
    return 0;
  }

  /** The lines of qemu-img info's "Snapshot list:" table (empty when there are none). */
  snapshotTable(): string[] {
    return [];
  }

  /** Format-specific facts for `info` (`format-specific.data` in qemu-img's JSON). */
  formatSpecific(): Record<string, unknown> | undefined {
    return undefined;
  }

  get caps(): Capabilities {
    return (this.capsCache ??= this.computeCaps());
  }

  protected computeCaps(): Capabilities {
    const writable = !this.readOnly && this._write !== undefined;
    return {
      writable,
      flush: this._flush !== undefined,
      fua: !writable ? 'none' : this.nativeFua || this._flush === undefined ? 'native' : 'emulate',
      zero: !writable ? 'none' : this._writeZeroes ? 'native' : 'emulate',
      discard: writable && this._discard ? 'native' : 'none',
      fastZero: writable && this._writeZeroes !== undefined,
      blockStatus: this._blockStatus !== undefined || this._blockStatusList !== undefined,
      multiConn: true,
      resize: writable && this._resize !== undefined,
    };
  }

  // ---- public API -------------------------------------------------------------------------

  async read(offset: number, into: Uint8Array, opts: IoOptions = NO_OPTIONS): Promise<void> {
    if (this.resizing) await this.resizing;
    const length = into.byteLength;
    this.checkIo('read', offset, length, opts);
    if (length === 0) return;
    // Every request of every layer passes here: one async frame, no closures, and no promise
    // for the request tracker unless the request must wait.
    const { start, end, aligned } = this.alignRange(offset, length);
    this.inFlight++;
    try {
      const req = this.tracker.tryBegin(start, end, false) ?? await this.tracker.begin(start, end, false);
      try {
        if (!aligned) {
          const bounce = new Uint8Array(end - start);
          await this.readChunks(start, bounce, opts);
          into.set(bounce.subarray(offset - start, offset - start + length));
        } else if (length <= this.limits.maxTransfer) {
          await this._read(offset, into, opts);
        } else {
          await this.readChunks(offset, into, opts);
        }
      } finally {
        req.release();
      }
    } finally {
      this.leave();
    }
  }

  async write(offset: number, data: Uint8Array, opts: WriteOptions = NO_OPTIONS): Promise<void> {
    if (this.resizing) await this.resizing;
    const length = data.byteLength;
    this.checkWritable('write', offset, length, opts);
    if (length === 0) return;
    if (this.detectZeroes !== 'off' && isAllZero(data)) {
      return this.writeZeroes(offset, length, { ...opts, mayUnmap: this.detectZeroes === 'unmap' });
    }
    const { start, end, aligned } = this.alignRange(offset, length);
    this.inFlight++;
    try {
      const req = this.tracker.tryBegin(start, end, !aligned) ?? await this.tracker.begin(start, end, !aligned);
      try {
        if (!aligned) await this.readModifyWrite(offset, data, start, end, opts);
        else if (length <= this.limits.maxTransfer) await this._write!(offset, data, this.hookWriteOptions(opts));
        else await this.writeChunks(offset, data, opts);
        this.grownTo(offset + length);
      } finally {
        req.release();
      }
      if (opts.fua && !this.nativeFua && this._flush) await this._flush(opts);
    } finally {
      this.leave();
    }
  }

  async writeZeroes(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    if (this.resizing) await this.resizing;
    this.checkWritable('write-zeroes', offset, length, opts);
    if (length === 0) return;
    if (!this._writeZeroes && (opts.noFallback || opts.allocate)) {
      throw new NotSupportedError(`${this.driver}: fast zeroing is not supported`, this.ctx('write-zeroes', offset, length));
    }
    await this.run(async () => {
      const { start, end, aligned } = this.alignRange(offset, length);
      const req = await this.tracker.begin(start, end, !aligned);
      try {
        // Partial blocks at either end are written as zero data; only whole blocks reach the hook.
        const align = this.limits.requestAlignment;
        const innerStart = alignUp(offset, align);
        const innerEnd = offset + length === this.size ? this.size : alignDown(offset + length, align);
        if (innerStart >= innerEnd) {
          await this.readModifyWrite(offset, zeroBuffer(length), start, end, opts);
        } else {
          // Whole blocks first: if the hook refuses a noFallback request (NBD FAST_ZERO), nothing
          // has been written yet, as the failure promises.
          await this.zeroAligned(innerStart, innerEnd - innerStart, opts);
          if (offset < innerStart) {
            await this.readModifyWrite(offset, zeroBuffer(innerStart - offset), start, innerStart, opts);
          }
          if (innerEnd < offset + length) {
            await this.readModifyWrite(innerEnd, zeroBuffer(offset + length - innerEnd), innerEnd, end, opts);
          }
        }
        this.grownTo(offset + length);
      } finally {
        req.release();
      }
      if (opts.fua && !this.nativeFua && this._flush) await this._flush(opts);
    });
  }

  async discard(offset: number, length: number, opts: IoOptions = {}): Promise<void> {
    if (this.resizing) await this.resizing;
    this.checkWritable('discard', offset, length, opts);
    if (length === 0 || !this._discard || this.discardMode === 'ignore') return;
    // Discard is advisory: shrink to whole discard blocks and leave partial ones alone.
    const align = Math.max(this.limits.discardAlignment, this.limits.requestAlignment);
    const start = alignUp(offset, align);
    const end = offset + length === this.size ? this.size : alignDown(offset + length, align);
    if (start >= end) return;
    await this.run(async () => {
      const req = await this.tracker.begin(start, end, false);
      try {
        const max = alignDown(this.limits.maxDiscard, align) || align;
        for (let pos = start; pos < end; pos += max) {
          try {
            await this._discard!(pos, Math.min(max, end - pos), opts);
          } catch (err) {
            if (!isNotSupported(err)) throw err;
          }
        }
      } finally {
        req.release();
      }
    });
  }

  async flush(opts: IoOptions = {}): Promise<void> {
    this.checkOpen('flush', opts);
    if (!this._flush) return;
    await this.run(() => this._flush!(opts));
  }

  async blockStatus(offset: number, maxLength: number, opts: IoOptions = {}): Promise<Extent> {
    if (this.resizing) await this.resizing;
    const length = this.checkStatusRange(offset, maxLength, opts);
    if (this._blockStatus) {
      const ext = await this.run(() => this._blockStatus!(offset, length, opts));
      this.checkExtents([ext], offset, length);
      return ext;
    }
    return (await this.blockStatusList(offset, length, opts))[0]!;
  }

  /** Consecutive extents from `offset` (at least one, within maxLength), as many as are at hand. */
  async blockStatusList(offset: number, maxLength: number, opts: IoOptions = {}): Promise<Extent[]> {
    if (this.resizing) await this.resizing;
    const length = this.checkStatusRange(offset, maxLength, opts);
    let list: Extent[];
    if (this._blockStatusList) list = await this.run(() => this._blockStatusList!(offset, length, opts));
    else if (this._blockStatus) list = [await this.run(() => this._blockStatus!(offset, length, opts))];
    else list = [{ offset, length, data: true, zero: false, present: true, depth: 0 }];
    this.checkExtents(list, offset, length);
    return list;
  }

  async *extents(offset: number, length: number, opts: IoOptions = {}): AsyncIterable<Extent> {
    for await (const list of this.extentLists(offset, length, opts)) yield* list;
  }

  /** The extents of a range in batches: the cheap way to walk a large image. */
  async *extentLists(offset: number, length: number, opts: IoOptions = {}): AsyncIterable<Extent[]> {
    this.checkRange('block-status', offset, length);
    const end = offset + length;
    for (let pos = offset; pos < end;) {
      const list = await this.blockStatusList(pos, end - pos, opts);
      yield list;
      const last = list[list.length - 1]!;
      pos = last.offset + last.length;
    }
  }

  async resize(size: number): Promise<void> {
    while (this.resizing) await this.resizing;
    this.checkOpen('resize', {});
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new BlockError('EINVAL', `Invalid size ${size}`, this.ctx('resize'));
    }
    if (this.readOnly) throw new BlockError('EROFS', 'Image is read-only', this.ctx('resize'));
    if (!this._resize) throw new NotSupportedError(`${this.driver} images cannot be resized`, this.ctx('resize'));
    // Requests in flight finish against the old size (drain); requests that arrive meanwhile
    // wait at `resizing` and are then checked against the new one. Without this, a write checked
    // against the old size could land past the new end (and grow a file back). A hook must not
    // call this node's own public API, or that call would wait for the resize that waits for it.
    const done = (async () => {
      await this.drain();
      await this._resize!(size);
      this.size = size;
    })();
    this.resizing = done.then(() => undefined, () => undefined);
    try {
      await done;
    } finally {
      this.resizing = undefined;
    }
  }

  /** Waits until no request is in flight. */
  async drain(): Promise<void> {
    if (this.inFlight === 0) return;
    await new Promise<void>((resolve) => this.idle.push(resolve));
  }

  close(): Promise<void> {
    // Every caller waits for the one close: a second close() must not return while the first
    // is still draining requests or closing children.
    return (this.closing ??= this.doClose());
  }

  private async doClose(): Promise<void> {
    this.state = 'closing';
    try {
      await this.drain();
      if (this._close) await this._close();
    } finally {
      this.state = 'closed';
      for (const child of this.children.values()) await child.close();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // ---- helpers for drivers ----------------------------------------------------------------

  protected debugEvent(name: string, detail?: Record<string, unknown>): void {
    if (this.events.listenerCount(name) > 0) this.events.emit(name, detail ?? {});
  }

  protected ctx(op: string, offset?: number, length?: number): Record<string, unknown> & { node: string; op: string } {
    const c: Record<string, unknown> & { node: string; op: string } = { node: this.nodeName, op };
    if (offset !== undefined) c.offset = offset;
    if (length !== undefined) c.length = length;
    if (this.filename) c.path = this.filename;
    return c;
  }

  // ---- internals --------------------------------------------------------------------------

  private async run<T>(fn: () => Promise<T>): Promise<T> {
    this.inFlight++;
    try {
      return await fn();
    } finally {
      this.leave();
    }
  }

  /** A request counted in `inFlight` has finished; wakes drain() when it was the last. */
  private leave(): void {
    if (--this.inFlight === 0 && this.idle.length > 0) for (const wake of this.idle.splice(0)) wake();
  }

  private checkOpen(op: string, opts: IoOptions): void {
    if (this.state !== 'open') throw new BlockError('ESHUTDOWN', `${op} on a closed image`, this.ctx(op));
    if (opts.signal?.aborted) throw new BlockError('E_ABORTED', `${op} was cancelled`, this.ctx(op), { cause: opts.signal.reason });
  }

  private checkStatusRange(offset: number, maxLength: number, opts: IoOptions): number {
    this.checkOpen('block-status', opts);
    // Numbers that are no byte count at all are EINVAL, as for every other request.
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(maxLength) || offset < 0 || maxLength < 0) {
      throw new BlockError('EINVAL', `block-status: invalid offset ${offset} or length ${maxLength}`, this.ctx('block-status', offset, maxLength));
    }
    if (offset >= this.size || maxLength === 0) {
      throw new BlockError('ERANGE', `block status at offset ${offset} is outside the image (size ${this.size})`,
        this.ctx('block-status', offset, maxLength));
    }
    return Math.min(maxLength, this.size - offset);
  }

  /** Driver answers must tile [offset, …) without gaps and stay inside the request. */
  private checkExtents(list: Extent[], offset: number, length: number): void {
    let pos = offset;
    for (const e of list) {
      if (e.offset !== pos || !(e.length > 0) || pos + e.length > offset + length) {
        throw new BlockError('EIO', `${this.driver}: block status returned an invalid extent`, this.ctx('block-status', offset, length));
      }
      pos += e.length;
    }
    if (list.length === 0) throw new BlockError('EIO', `${this.driver}: block status returned no extent`, this.ctx('block-status', offset, length));
  }

  private checkNumbers(op: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new BlockError('EINVAL', `${op}: invalid offset ${offset} or length ${length}`, this.ctx(op, offset, length));
    }
  }

  private checkRange(op: string, offset: number, length: number): void {
    this.checkNumbers(op, offset, length);
    if (offset + length > this.size) {
      throw new BlockError('ERANGE', `${op} of ${length} bytes at offset ${offset} is past the end of the image (size ${this.size})`,
        this.ctx(op, offset, length));
    }
  }

  private checkIo(op: string, offset: number, length: number, opts: IoOptions): void {
    this.checkOpen(op, opts);
    this.checkRange(op, offset, length);
  }

  private checkWritable(op: string, offset: number, length: number, opts: IoOptions): void {
    this.checkOpen(op, opts);
    if (!this.growable) this.checkRange(op, offset, length);
    else if (!Number.isSafeInteger(offset + length)) this.checkRange(op, offset, Number.MAX_SAFE_INTEGER);
    else this.checkNumbers(op, offset, length);
    if (!this.caps.writable) {
      throw new BlockError('EROFS', this.readOnly ? 'Image is read-only' : `${this.driver} does not support writes`, this.ctx(op, offset, length));
    }
  }

  private grownTo(end: number): void {
    if (end > this.size) this.size = end;
  }

  /** The request widened to requestAlignment; a request ending at the image end needs no tail padding. */
  private alignRange(offset: number, length: number): { start: number; end: number; aligned: boolean } {
    const align = this.limits.requestAlignment;
    const start = alignDown(offset, align);
    // A growable node's write past the end makes the new end the end.
    const end = Math.min(alignUp(offset + length, align), Math.max(this.size, offset + length));
    return { start, end, aligned: start === offset && end === offset + length };
  }

  private async readChunks(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    const max = this.limits.maxTransfer;
    for (let done = 0; done < into.byteLength; done += max) {
      await this._read(offset + done, into.subarray(done, Math.min(done + max, into.byteLength)), opts);
    }
  }

  private async writeChunks(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const max = this.limits.maxTransfer;
    const hookOpts = this.hookWriteOptions(opts);
    for (let done = 0; done < data.byteLength; done += max) {
      await this._write!(offset + done, data.subarray(done, Math.min(done + max, data.byteLength)), hookOpts);
    }
  }

  /**
   * The options a write hook sees: `fua` only when the hook honours it (else the layer flushes
   * afterwards). Copied only when that changes something: this runs once per request.
   */
  private hookWriteOptions<T extends WriteOptions>(opts: T): T {
    return opts.fua && !this.nativeFua ? { ...opts, fua: false } : opts;
  }

  /** Writes `data` at `offset` inside the aligned block range [start, end); the caller serialises. */
  private async readModifyWrite(offset: number, data: Uint8Array, start: number, end: number, opts: WriteOptions): Promise<void> {
    const align = this.limits.requestAlignment;
    const bounce = new Uint8Array(end - start);
    if (offset > start) await this.readChunks(start, bounce.subarray(0, Math.min(align, end - start)), opts);
    const tail = offset + data.byteLength;
    if (tail < end) {
      const tailStart = Math.max(alignDown(tail, align), start);
      if (!(offset > start && tailStart === start)) await this.readChunks(tailStart, bounce.subarray(tailStart - start), opts);
    }
    bounce.set(data, offset - start);
    this.debugEvent('rmw', { offset: start, length: end - start });
    await this.writeChunks(start, bounce, opts);
  }

  /** Zeroes a range aligned to requestAlignment through the hook, falling back to zero buffers. */
  private async zeroAligned(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    const zAlign = Math.max(this.limits.zeroAlignment, this.limits.requestAlignment);
    const max = alignDown(this.limits.maxWriteZeroes, zAlign) || zAlign;
    const hookOpts = this.hookWriteOptions(opts);
    const end = offset + length;
    // Head and tail fragments below the zero alignment go to the hook on their own, so the
    // middle arrives aligned; the driver may refuse them and the fallback writes buffers.
    for (let pos = offset; pos < end;) {
      let next: number;
      if (pos % zAlign !== 0) next = Math.min(alignUp(pos, zAlign), end);
      else if (end - pos >= zAlign) next = pos + Math.min(max, alignDown(end - pos, zAlign));
      else next = end;
      await this.zeroChunk(pos, next - pos, hookOpts);
      pos = next;
    }
  }

  private async zeroChunk(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    if (this._writeZeroes) {
      try {
        return await this._writeZeroes(offset, length, opts);
      } catch (err) {
        if (!isNotSupported(err) || opts.noFallback || opts.allocate) throw err;
      }
    }
    for (let done = 0; done < length;) {
      const n = Math.min(ZERO_FALLBACK_CHUNK, this.limits.maxTransfer, length - done);
      await this._write!(offset + done, zeroBuffer(n), opts);
      done += n;
    }
  }
}
