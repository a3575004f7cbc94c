import { BlockNode, type NodeOptions } from '../../../core/block-node.js';
import { BlockError, NotSupportedError } from '../../../core/errors.js';
import type { Extent, IoOptions, ZeroOptions } from '../../../core/types.js';
import { Qcow2BlockStatus } from './block-status.js';
import type { CheckFix, CheckResult } from './check.js';
import { CacheCleaner } from './cache-cleaner.js';
import { resolveCacheSizes, type CacheOptions, type CacheSizes } from './cache-options.js';
import { CompressedReader } from './compressed-reader.js';
import { CompressedWriter, type CompressedWrite } from './compressed-writer.js';
import { CorruptionSignal } from './corruption.js';
import type { CompressionType } from './compression.js';
import { COMPAT, INCOMPAT } from './constants.js';
import { DataWriter } from './data-writer.js';
import { geometryOf, type Qcow2Geometry } from './geometry.js';
import type { HostAllocation } from './host-alloc.js';
import type { Qcow2Header } from './header.js';
import { clearStaleAutoclear, writeFeatureField } from './header-update.js';
import { L2Editor } from './l2-editor.js';
import { Sub } from './l2-entry.js';
import { LazyRefcounts } from './lazy-refcounts.js';
import { Qcow2Mapping } from './mapping.js';
import { MetadataLock } from './metadata-lock.js';
import { MetadataWriteback } from './metadata-writeback.js';
import { OverlapGuard } from './overlap-guard.js';
import { RefcountLoader } from './refcounts.js';
import { resizeQcow2 } from './resize.js';
import { snapshotInfoJson, snapshotTableHuman, type Qcow2Snapshot } from './snapshots.js';
import { Qcow2Tables } from './tables.js';
import { ZeroWriter } from './zero-writer.js';

/** What a whole-image operation (amend, preallocation, a new backing link) works with; see maintain(). */
export interface Qcow2Internals {
  g: Qcow2Geometry;
  header: Qcow2Header;
  file: BlockNode;
  dataFile: BlockNode;
  backing: BlockNode | undefined;
  snapshots: readonly Qcow2Snapshot[];
  tables: Qcow2Tables;
  refcounts: RefcountLoader;
  mapping: Qcow2Mapping;
  editor: L2Editor;
  writeback: MetadataWriteback;
  guard: OverlapGuard;
  lazy: LazyRefcounts;
}

/** Node options plus QEMU's qcow2 runtime options. */
export interface Qcow2Options extends NodeOptions, CacheOptions {
  /** QEMU's lazy-refcounts option; by default what the header's compatible bit says. */
  lazyRefcounts?: boolean | undefined;
  /** Zero the untouched parts of new clusters cheaply where the storage can (default on; see AllocSpace). */
  allocSpace?: boolean | undefined;
}

export interface Qcow2Parts {
  file: BlockNode;
  header: Qcow2Header;
  /** Where guest data lives: the image file, or an external data file. */
  dataFile: BlockNode;
  backing: BlockNode | undefined;
  snapshots: Qcow2Snapshot[];
  /** Bytes the snapshot table takes in the file. */
  snapshotTableLength: number;
  /** Open this snapshot instead of the active state (read-only). */
  snapshot: Qcow2Snapshot | undefined;
  compression: CompressionType;
}

/**
 * The qcow2 format (spec: docs/interop/qcow2.rst): guest offsets map through L1 and L2 tables
 * to data clusters in the image file or an external data file; unallocated ranges read from the
 * backing chain. This file wires the parts together and holds the read path; the mapping,
 * writers, writeback order, resize and overlap guard live beside it, one job per file.
 */
export class Qcow2Node extends BlockNode {
  readonly driver = 'qcow2';
  readonly header: Qcow2Header;
  readonly clusterSize: number;
  readonly snapshots: readonly Qcow2Snapshot[];
  readonly compression: CompressionType;
  private readonly g: Qcow2Geometry;
  private readonly tables: Qcow2Tables;
  private readonly snapshotTableLength: number;
  private readonly dataFile: BlockNode;
  private readonly refcounts: RefcountLoader;
  private readonly lock = new MetadataLock();
  private readonly mapping: Qcow2Mapping;
  private readonly status: Qcow2BlockStatus;
  private readonly compressed: CompressedReader;
  private readonly writeback: MetadataWriteback;
  private readonly guard: OverlapGuard;
  private readonly editor: L2Editor;
  private readonly dataWriter: DataWriter;
  private readonly zeroWriter: ZeroWriter;
  private readonly compressedWriter: CompressedWriter;
  private readonly cleaner: CacheCleaner;
  private readonly lazy: LazyRefcounts;
  private readonly signal: CorruptionSignal;
  private autoclear: Promise<void> | undefined;

  private constructor(parts: Qcow2Parts, tables: Qcow2Tables, settings: { cache: CacheSizes; lazyRefcounts: boolean }, opts: Qcow2Options) {
    // A snapshot is a past state: it opens read-only, as qemu-img's -l does.
    super({ ...opts, readOnly: (opts.readOnly ?? false) || parts.snapshot !== undefined });
    const h = parts.header;
    const file = parts.file;
    this.header = h;
    this.children.set('file', file);
    if (parts.dataFile !== file) this.children.set('data-file', parts.dataFile);
    if (parts.backing) this.children.set('backing', parts.backing);
    this.dataFile = parts.dataFile;
    this.snapshots = parts.snapshots;
    this.snapshotTableLength = parts.snapshotTableLength;
    this.compression = parts.compression;
    const g = (this.g = geometryOf(h, parts.dataFile !== file));
    this.clusterSize = g.clusterSize;
    this.tables = tables;
    this.size = parts.snapshot?.diskSize ?? h.size;
    // Zero writes and discards work on whole clusters (subclusters for zeroing with extended L2).
    // Buffers handed down to the file keep their addresses: O_DIRECT's alignment (cache=none)
    // holds for ours too, so that callers allocate aligned buffers rather than every data write
    // going through a bounce buffer (QEMU's bdrv_refresh_limits merges min_mem_alignment so).
    const memoryAlignment = Math.max(file.limits.memoryAlignment, parts.dataFile.limits.memoryAlignment);
    this.limits = { ...this.limits, optTransfer: g.clusterSize, zeroAlignment: g.subclusterSize, discardAlignment: g.clusterSize, memoryAlignment };

    const cache = settings.cache;
    const corruption = (what: string) => this.corruption(what);
    const signal = (this.signal = new CorruptionSignal({ file, header: h, readOnly: () => this.readOnly, error: corruption }));
    const size = () => this.size;
    const refcounts = (this.refcounts = new RefcountLoader(file, h, file.filename, cache.refcountEntries * g.clusterSize, (what) => signal.signal(what)));
    const loadRefcounts = () => refcounts.get();
    const lazy = (this.lazy = new LazyRefcounts(file, h, settings.lazyRefcounts));
    const mapping = (this.mapping = new Qcow2Mapping(g, tables, corruption));
    this.status = new Qcow2BlockStatus(mapping, { file, dataFile: this.dataFile, backing: parts.backing, clusterSize: g.clusterSize, refcounts: loadRefcounts });
    this.compressed = new CompressedReader(file, parts.compression, g.clusterSize, corruption);
    const writeback = (this.writeback = new MetadataWriteback({ file, dataFile: this.dataFile, tables, refcounts, lazy, clusterSize: g.clusterSize, l2CacheBytes: cache.l2Entries * cache.l2EntrySize }));
    const guard = (this.guard = new OverlapGuard({
      header: h, clusterSize: g.clusterSize, hasDataFile: g.hasDataFile, tables, refcounts: loadRefcounts,
      currentRefcounts: () => refcounts.current, snapshots: parts.snapshots, snapshotTableLength: parts.snapshotTableLength, signal,
    }));
    const editor = (this.editor = new L2Editor(g, tables, refcounts, lazy));
    const lock = this.lock;
    this.dataWriter = new DataWriter({
      g, file, dataFile: this.dataFile, mapping, editor, lock, writeback, guard, refcounts,
      readGuest: (offset, into) => this._read(offset, into, {}), backing: parts.backing, allocSpace: opts.allocSpace ?? true, size, corruption,
    });
    this.zeroWriter = new ZeroWriter({
      g, header: h, dataFile: this.dataFile, hasBacking: parts.backing !== undefined, mapping, editor, lock, writeback, size,
      ctx: (op, offset, length) => this.ctx(op, offset, length),
    });
    this.compressedWriter = new CompressedWriter({
      g, file, compression: parts.compression, editor, lock, writeback, guard, refcounts, size, corruption,
      writePlain: (offset, data) => this.dataWriter.write(offset, data),
      written: () => this.compressed.forget(),
      ctx: (op, offset, length) => this.ctx(op, offset, length),
    });
    this.cleaner = new CacheCleaner(cache.cleanInterval, () => {
      const l2 = tables.cleanUnused();
      const refcount = refcounts.current?.cleanUnused() ?? 0;
      this.debugEvent('cache.clean', { l2, refcount });
    });
  }

  /** Opens the image; invalid runtime options fail with QEMU's message (EINVAL). */
  static async open(parts: Qcow2Parts, opts: Qcow2Options = {}): Promise<Qcow2Node> {
    const h = parts.header;
    const g = geometryOf(h, parts.dataFile !== parts.file);
    const cache = resolveCacheSizes(opts, { clusterSize: g.clusterSize, l2EntryBytes: g.entryBytes, size: parts.snapshot?.diskSize ?? h.size });
    const lazyRefcounts = lazyRefcountsWanted(h, opts);
    let node: Qcow2Node | undefined;
    const layout = { clusterSize: g.clusterSize, entryBytes: g.entryBytes, sliceBytes: cache.l2EntrySize, cacheEntries: cache.l2Entries };
    const tables = await Qcow2Tables.load(parts.file, layout, parts.snapshot?.l1TableOffset ?? h.l1TableOffset,
      parts.snapshot?.l1Size ?? h.l1Size, (offset, length) => node?.debugEvent('l2.load', { offset, length }));
    node = new Qcow2Node(parts, tables, { cache, lazyRefcounts }, opts);
    return node;
  }

  override get filename(): string {
    return this.file!.filename;
  }

  override formatSpecific(): Record<string, unknown> {
    const h = this.header;
    if (h.version === 2) return { compat: '0.10', 'compression-type': this.compression, 'refcount-bits': 2 ** h.refcountOrder };
    // Key order is the order qemu-img info prints them in.
    const data: Record<string, unknown> = {
      compat: '1.1',
      'compression-type': this.compression,
      'lazy-refcounts': (h.compatibleFeatures & 1n) !== 0n,
      'refcount-bits': 2 ** h.refcountOrder,
    };
    if (h.incompatibleFeatures & INCOMPAT.DATA_FILE) {
      if (h.dataFile !== undefined) data['data-file'] = h.dataFile;
      data['data-file-raw'] = (h.autoclearFeatures & 2n) !== 0n;
    }
    data.corrupt = (h.incompatibleFeatures & INCOMPAT.CORRUPT) !== 0n;
    data['extended-l2'] = this.g.extendedL2;
    return data;
  }

  override imageInfo(): Record<string, unknown> {
    const h = this.header;
    const info: Record<string, unknown> = { 'cluster-size': this.clusterSize, 'dirty-flag': this.dirty };
    if (this.snapshots.length > 0) info.snapshots = this.snapshots.map(snapshotInfoJson);
    if (h.backingFile !== undefined) {
      info['backing-filename'] = h.backingFile;
      if (this.backing) info['full-backing-filename'] = this.backing.filename;
      if (h.backingFormat !== undefined) info['backing-filename-format'] = h.backingFormat;
    }
    return info;
  }

  /** The VM state sits past the last L1 entry the guest data needs (qcow2_vm_state_offset). */
  override vmStateOffset(): number {
    const l1Span = this.clusterSize * this.g.l2Entries;
    return Math.ceil(this.size / l1Span) * l1Span;
  }

  override snapshotTable(): string[] {
    return this.snapshots.length > 0 ? snapshotTableHuman([...this.snapshots]) : [];
  }

  get dirty(): boolean {
    return (this.header.incompatibleFeatures & INCOMPAT.DIRTY) !== 0n;
  }

  /** Writes are refused until a repair (see refuseIfCorrupt; in-place.ts asks). */
  get corrupt(): boolean { return this.signal.corrupt; }

  // ---- reads ------------------------------------------------------------------------------

  protected async _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    for (let done = 0; done < into.byteLength;) {
      const pos = offset + done;
      // The mapping answers at once when the L2 slice is cached: no await (a microtask) then.
      const mapped = this.mapping.mapRun(pos, into.byteLength - done);
      const run = mapped instanceof Promise ? await mapped : mapped;
      const dst = run.length === into.byteLength ? into : into.subarray(done, done + run.length);
      switch (run.sub) {
        case Sub.Normal:
          await readHost(this.dataFile, run.host, dst, opts);
          break;
        case Sub.ZeroPlain:
        case Sub.ZeroAlloc:
          dst.fill(0);
          break;
        case Sub.UnallocatedPlain:
        case Sub.UnallocatedAlloc:
          // Unallocated ranges read from the backing image; past its end (or without one), zeros.
          if (this.backing) await readHost(this.backing, pos, dst, opts);
          else dst.fill(0);
          break;
        case Sub.Compressed:
          await this.compressed.read(run.compressed!, pos, dst);
          break;
      }
      done += run.length;
    }
  }

  protected override _blockStatusList(offset: number, maxLength: number, opts: IoOptions): Promise<Extent[]> {
    return this.status.list(offset, maxLength, opts);
  }

  // ---- writes -----------------------------------------------------------------------------

  protected override async _write(offset: number, data: Uint8Array): Promise<void> {
    this.refuseIfCorrupt('write', offset, data.byteLength);
    await this.settleAutoclear();
    await this.dataWriter.write(offset, data);
  }

  protected override async _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    this.refuseIfCorrupt('write zeroes', offset, length);
    await this.settleAutoclear();
    await this.zeroWriter.writeZeroes(offset, length, opts);
  }

  protected override async _discard(offset: number, length: number): Promise<void> {
    this.refuseIfCorrupt('discard', offset, length);
    await this.settleAutoclear();
    await this.zeroWriter.discard(offset, length);
  }

  /**
   * Compressed clusters (QEMU's BDRV_REQ_WRITE_COMPRESSED, as qemu-img convert -c writes them):
   * whole clusters from a cluster boundary (the image's last one may be short), into clusters
   * that hold nothing yet. The clusters are compressed when this resolves; `commit()` stores them,
   * so a caller can compress many requests at once and still store them in order.
   */
  async prepareCompressedWrite(offset: number, data: Uint8Array): Promise<CompressedWrite> {
    if (this.readOnly) throw new BlockError('EROFS', 'Image is read-only', this.ctx('write compressed', offset, data.byteLength));
    this.refuseIfCorrupt('write compressed', offset, data.byteLength);
    await this.settleAutoclear();
    return this.compressedWriter.prepare(offset, data);
  }

  /**
   * QEMU's allocating write in three steps, for data written from outside the driver (an
   * in-kernel copy into the image's file): whole clusters of [offset, offset + length) get host
   * runs (new clusters, or ours written in place) that the caller fills, then commits (the L2
   * entries point at them) or aborts. Undefined where the range cannot be written this way
   * (partial clusters, compressed or shared clusters, an external data file): write it the
   * ordinary way. See HostAllocation.
   */
  async allocateHostRange(offset: number, length: number): Promise<HostAllocation | undefined> {
    if (this.readOnly) throw new BlockError('EROFS', 'Image is read-only', this.ctx('write', offset, length));
    this.refuseIfCorrupt('write', offset, length);
    await this.settleAutoclear();
    return this.dataWriter.allocateHost(offset, length);
  }

  async writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    await (await this.prepareCompressedWrite(offset, data)).commit();
  }

  /**
   * Clears stale autoclear bits before the first guest write. The opener does that already,
   * except for an image opened to be checked, whose bitmaps stay valid while only check writes.
   */
  private settleAutoclear(): Promise<void> {
    return (this.autoclear ??= clearStaleAutoclear(this.file!, this.header).catch((err: unknown) => {
      this.autoclear = undefined;
      throw err;
    }));
  }

  /**
   * Once the image is marked corrupt (a corruption was signalled, or it was opened corrupt to be
   * checked), nothing but a repair may write it: QEMU makes the node unusable then.
   */
  private refuseIfCorrupt(op: string, offset?: number, length?: number): void {
    if (!this.signal.corrupt) return;
    throw new BlockError('E_CORRUPT', `qcow2 image '${this.filename}' is marked corrupt and cannot be written until it is repaired (vdisk check -r all)`,
      this.ctx(op, offset, length));
  }

  protected override async _flush(): Promise<void> {
    await this.lock.run(() => this.writeback.flush());
  }

  protected override async _close(): Promise<void> {
    this.cleaner.stop();
    if (this.readOnly) return;
    await this.lock.run(async () => {
      await this.writeback.flush();
      await this.lazy.afterCleanFlush();
    });
  }

  protected override async _resize(size: number): Promise<void> {
    this.refuseIfCorrupt('resize');
    await this.settleAutoclear();
    if (this.snapshots.length > 0 && this.header.version < 3) {
      // A v2 snapshot does not record its disk size: it would take the new one.
      throw new NotSupportedError("Can't resize a v2 image which has snapshots", this.ctx('resize'));
    }
    if (this.snapshots.length > 0 && size < this.header.size) {
      throw new NotSupportedError("qcow2: can't shrink an image which has snapshots", this.ctx('resize'));
    }
    await this.lock.run(() => resizeQcow2(size, {
      g: this.g, header: this.header, file: this.file!, dataFile: this.dataFile, tables: this.tables,
      refcounts: this.refcounts, editor: this.editor, writeback: this.writeback, guard: this.guard,
    }));
  }

  /**
   * Runs a whole-image operation (amend, preallocation, a new backing link; each in its own
   * file) with the metadata lock held, after the checks a guest write makes.
   */
  async maintain<T>(op: string, fn: (parts: Qcow2Internals) => Promise<T>): Promise<T> {
    if (this.readOnly) throw new BlockError('EROFS', 'Image is read-only', this.ctx(op));
    this.refuseIfCorrupt(op);
    await this.settleAutoclear();
    return this.lock.run(() => fn({
      g: this.g, header: this.header, file: this.file!, dataFile: this.dataFile, backing: this.backing, snapshots: this.snapshots,
      tables: this.tables, refcounts: this.refcounts, mapping: this.mapping, editor: this.editor, writeback: this.writeback,
      guard: this.guard, lazy: this.lazy,
    }));
  }

  // ---- check ------------------------------------------------------------------------------

  /**
   * qemu-img check: counts every reference, compares with the refcounts and repairs what `fix`
   * allows. Runs with the metadata lock held, after a flush, so disk and memory agree.
   */
  async check(fix: CheckFix = 'none'): Promise<CheckResult> {
    if (fix !== 'none' && this.readOnly) throw new BlockError('EROFS', 'Repairing needs the image open for writing', this.ctx('check'));
    return this.lock.run(async () => {
      if (!this.readOnly) await this.writeback.flush();
      const h = this.header;
      // check's dozen modules load only for a check (or a dirty image's repair).
      const { checkQcow2 } = await import('./check.js');
      const result = await checkQcow2({
        file: this.file!,
        header: h,
        clusterSize: this.clusterSize,
        size: h.size,
        l1Entries: () => this.tables.l1Entries(),
        snapshotTable: () => (h.nbSnapshots > 0 ? { offset: h.snapshotsOffset, length: this.snapshotTableLength } : undefined),
        readTable: (offset) => this.tables.readForCheck(offset),
        refcounts: await this.refcounts.get(),
        reloadRefcounts: () => this.refcounts.reload(),
        signal: this.signal,
        setCopied: async (kind, table, index, copied) => {
          if (kind === 'l1') return this.tables.setL1Copied(index, copied);
          await this.tables.setL2Copied(table, index, copied, this.g.entryBytes);
        },
      }, fix);
      if (!this.readOnly) await this.writeback.flush();
      if (fix !== 'none' && !result.checkErrors && !result.corruptions && !(h.incompatibleFeatures & INCOMPAT.CORRUPT)) this.signal.repaired();
      return result;
    });
  }

  /** Clears incompatible-feature bits (dirty, corrupt) once the image is consistent again. */
  async clearIncompatible(bits: bigint): Promise<void> {
    const h = this.header;
    if (h.version < 3 || (h.incompatibleFeatures & bits) === 0n) return;
    await this.lock.run(async () => {
      await this.writeback.flush();
      await writeFeatureField(this.file!, 'incompatible', h.incompatibleFeatures & ~bits);
      h.incompatibleFeatures &= ~bits;
    });
  }

  private corruption(what: string): BlockError {
    return new BlockError('E_CORRUPT', `qcow2 image '${this.filename}' is corrupt: ${what}`, this.ctx('read'));
  }
}

/** Whether to use lazy refcounts; v2 images have no dirty bit, so they cannot. */
function lazyRefcountsWanted(h: Qcow2Header, opts: Qcow2Options): boolean {
  const wanted = opts.lazyRefcounts ?? (h.compatibleFeatures & COMPAT.LAZY_REFCOUNTS) !== 0n;
  if (wanted && h.version < 3) {
    throw new BlockError('EINVAL', 'Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level', { op: 'open' });
  }
  return wanted;
}

/** Host reads past the end of the host file read zeros, as QEMU's block layer makes them. */
function readHost(node: BlockNode, host: number, dst: Uint8Array, opts: IoOptions): Promise<void> {
  const n = Math.max(0, Math.min(dst.byteLength, node.size - host));
  // The common case passes the node's promise straight on: no frame of its own.
  return n === dst.byteLength ? node.read(host, dst, opts) : readHostShort(node, host, dst, n, opts);
}

async function readHostShort(node: BlockNode, host: number, dst: Uint8Array, n: number, opts: IoOptions): Promise<void> {
  if (n > 0) await node.read(host, dst.subarray(0, n), opts);
  dst.fill(0, n);
}
