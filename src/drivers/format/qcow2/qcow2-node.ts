import { BlockNode, type NodeOptions } from '../../../core/block-node.js';
import { BlockError, NotSupportedError } from '../../../core/errors.js';
import type { Extent, IoOptions, ZeroOptions } from '../../../core/types.js';
import { decompressCluster, type CompressionType } from './compression.js';
import { AUTOCLEAR, INCOMPAT, OFLAG_COPIED, OFLAG_ZERO } from './constants.js';
import type { Qcow2Header } from './header.js';
import { compressedRange, decode, Sub, type Decoded, type EntryView } from './l2-entry.js';
import { Refcounts } from './refcounts.js';
import { snapshotInfoJson, snapshotTableHuman, type Qcow2Snapshot } from './snapshots.js';
import { Qcow2Tables } from './tables.js';
import { checkQcow2, type CheckFix, type CheckResult } from './check.js';

export interface Qcow2Options extends NodeOptions {
  /** Bytes of L2 tables kept in memory (QEMU's l2-cache-size). */
  l2CacheSize?: number;
  /** Bytes of refcount blocks kept in memory (QEMU's refcount-cache-size). */
  refcountCacheSize?: number;
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

/** A run of guest bytes that one kind of (sub)cluster covers, with contiguous host bytes. */
interface Run {
  sub: Sub;
  length: number;
  /** Host byte offset of the run's first guest byte (Normal, ZeroAlloc, UnallocatedAlloc). */
  host: number;
  /** The cluster is ours alone (refcount 1): it may be written in place. */
  copied: boolean;
  /** For a compressed run: the L2 table and entry index. */
  view?: EntryView;
  index?: number;
}

/** QEMU covers the whole image's L2 tables up to this much by default (we do the same). */
const DEFAULT_L2_CACHE_MAX = 32 * 1024 * 1024;
const DEFAULT_REFCOUNT_CACHE = 4 * 1024 * 1024;
/** Extents one block-status call returns at most. */
const STATUS_BATCH = 1024;

/**
 * The qcow2 format (spec: docs/interop/qcow2.rst): guest offsets map through L1 and L2 tables
 * to data clusters in the image file or an external data file; unallocated ranges read from the
 * backing chain. This file holds the mapping and the read path; metadata parsing lives beside it.
 */
export class Qcow2Node extends BlockNode {
  readonly driver = 'qcow2';
  readonly header: Qcow2Header;
  readonly clusterSize: number;
  readonly snapshots: readonly Qcow2Snapshot[];
  readonly compression: CompressionType;
  private readonly extendedL2: boolean;
  private readonly l2Entries: number;
  private readonly subclusterSize: number;
  private readonly tables: Qcow2Tables;
  private readonly snapshotTableLength: number;
  private readonly dataFile: BlockNode;
  private readonly l2CacheBytes: number;
  /** Guest data written since the last flush (it must be stable before tables point at it). */
  private dataWritten = false;
  /** Serialises metadata changes: allocation, L2 updates, flush. */
  private lock: Promise<void> = Promise.resolve();
  private refcounts: Refcounts | undefined;
  private readonly refcountCacheSize: number;
  /** Whether data extents must be checked against holes in the host file (see blockStatus). */
  private metadataPreallocation: Promise<boolean> | undefined;
  private lastCompressed: { offset: number; data: Promise<Uint8Array> } | undefined;

  private constructor(parts: Qcow2Parts, tables: Qcow2Tables, l2CacheBytes: number, opts: Qcow2Options) {
    // A snapshot is a past state: it opens read-only, as qemu-img's -l does.
    super({ ...opts, readOnly: (opts.readOnly ?? false) || parts.snapshot !== undefined });
    const h = parts.header;
    this.header = h;
    this.children.set('file', parts.file);
    if (parts.dataFile !== parts.file) this.children.set('data-file', parts.dataFile);
    if (parts.backing) this.children.set('backing', parts.backing);
    this.dataFile = parts.dataFile;
    this.snapshots = parts.snapshots;
    this.snapshotTableLength = parts.snapshotTableLength;
    this.compression = parts.compression;
    this.clusterSize = 2 ** h.clusterBits;
    this.extendedL2 = (h.incompatibleFeatures & INCOMPAT.EXTL2) !== 0n;
    this.l2Entries = this.clusterSize / (this.extendedL2 ? 16 : 8);
    this.subclusterSize = this.extendedL2 ? this.clusterSize / 32 : this.clusterSize;
    this.tables = tables;
    this.l2CacheBytes = l2CacheBytes;
    this.size = parts.snapshot?.diskSize ?? h.size;
    this.refcountCacheSize = opts.refcountCacheSize ?? DEFAULT_REFCOUNT_CACHE;
    // Zero writes and discards work on whole clusters (subclusters for zeroing with extended L2).
    this.limits = { ...this.limits, optTransfer: this.clusterSize, zeroAlignment: this.subclusterSize, discardAlignment: this.clusterSize };
  }

  static async open(parts: Qcow2Parts, opts: Qcow2Options = {}): Promise<Qcow2Node> {
    const h = parts.header;
    const clusterSize = 2 ** h.clusterBits;
    const l2Entries = clusterSize / ((h.incompatibleFeatures & INCOMPAT.EXTL2) ? 16 : 8);
    const l2Needed = Math.ceil(h.size / clusterSize / l2Entries) * clusterSize;
    const cacheBytes = opts.l2CacheSize ?? Math.min(DEFAULT_L2_CACHE_MAX, Math.max(l2Needed, clusterSize));
    let node: Qcow2Node | undefined;
    const tables = await Qcow2Tables.load(parts.file, clusterSize, parts.snapshot?.l1TableOffset ?? h.l1TableOffset,
      parts.snapshot?.l1Size ?? h.l1Size, cacheBytes, (offset) => node?.debugEvent('l2.load', { offset }));
    node = new Qcow2Node(parts, tables, cacheBytes, opts);
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
    data['extended-l2'] = this.extendedL2;
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

  override snapshotTable(): string[] {
    return this.snapshots.length > 0 ? snapshotTableHuman([...this.snapshots]) : [];
  }

  get dirty(): boolean {
    return (this.header.incompatibleFeatures & INCOMPAT.DIRTY) !== 0n;
  }

  // ---- reads ------------------------------------------------------------------------------

  protected async _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    for (let done = 0; done < into.byteLength;) {
      const pos = offset + done;
      const run = await this.mapRun(pos, into.byteLength - done);
      const dst = into.subarray(done, done + run.length);
      switch (run.sub) {
        case Sub.Normal:
          await this.readHost(this.dataFile, run.host, dst, opts);
          break;
        case Sub.ZeroPlain:
        case Sub.ZeroAlloc:
          dst.fill(0);
          break;
        case Sub.UnallocatedPlain:
        case Sub.UnallocatedAlloc:
          await this.readBacking(pos, dst, opts);
          break;
        case Sub.Compressed:
          await this.readCompressed(run, pos, dst);
          break;
      }
      done += run.length;
    }
  }

  /** Host reads past the end of the host file read zeros, as QEMU's block layer makes them. */
  private async readHost(node: BlockNode, host: number, dst: Uint8Array, opts: IoOptions): Promise<void> {
    const n = Math.max(0, Math.min(dst.byteLength, node.size - host));
    if (n > 0) await node.read(host, dst.subarray(0, n), opts);
    if (n < dst.byteLength) dst.fill(0, n);
  }

  /** Unallocated ranges read from the backing image; past its end (or without one), zeros. */
  private async readBacking(pos: number, dst: Uint8Array, opts: IoOptions): Promise<void> {
    const backing = this.backing;
    if (!backing) return void dst.fill(0);
    await this.readHost(backing, pos, dst, opts);
  }

  private async readCompressed(run: Run, pos: number, dst: Uint8Array): Promise<void> {
    const range = compressedRange(run.view!, run.index!);
    const file = this.file!;
    if (range.offset > Number.MAX_SAFE_INTEGER || range.offset >= file.size) {
      throw this.corruption(`compressed cluster at guest offset ${pos} points past the end of the file`);
    }
    // Consecutive reads of one compressed cluster (a guest reading 4 KiB at a time) decompress once.
    if (this.lastCompressed?.offset !== range.offset) {
      const data = (async () => {
        const input = new Uint8Array(Math.min(range.length, file.size - range.offset));
        await file.read(range.offset, input);
        return decompressCluster(this.compression, input, this.clusterSize);
      })();
      this.lastCompressed = { offset: range.offset, data };
      data.catch(() => {
        if (this.lastCompressed?.data === data) this.lastCompressed = undefined;
      });
    }
    const cluster = await this.lastCompressed.data;
    const inCluster = pos % this.clusterSize;
    dst.set(cluster.subarray(inCluster, inCluster + dst.byteLength));
  }

  // ---- mapping ----------------------------------------------------------------------------

  /** The run of same-kind, host-contiguous (sub)clusters starting at `offset`, within one L2 table. */
  private async mapRun(offset: number, maxLength: number): Promise<Run> {
    const cs = this.clusterSize;
    const clusterIndex = Math.floor(offset / cs);
    const inCluster = offset - clusterIndex * cs;
    const l1Index = Math.floor(clusterIndex / this.l2Entries);
    const l2Index = clusterIndex % this.l2Entries;
    const limit = Math.min(maxLength, (this.l2Entries - l2Index) * cs - inCluster);
    const l2Offset = this.tables.l1[l1Index] ?? 0;
    if (l2Offset === 0) return { sub: Sub.UnallocatedPlain, length: limit, host: 0, copied: false };
    // Tables open leniently so check can see a damaged image; I/O through a bad entry stops here.
    if (l2Offset % cs !== 0) throw this.corruption(`L1 entry ${l1Index} points at a misaligned L2 table (0x${l2Offset.toString(16)})`);
    const table = await this.tables.get(l2Offset);
    const view: EntryView = {
      dv: new DataView(table.buffer, table.byteOffset, table.byteLength),
      extendedL2: this.extendedL2,
      hasDataFile: this.dataFile !== this.file,
      clusterBits: this.header.clusterBits,
    };
    const ss = this.subclusterSize;
    let sc = Math.floor(inCluster / ss);
    const first = decode(view, l2Index, sc);
    if (first.invalid) throw this.corruption(`${first.invalid} (guest offset ${offset})`);
    if (first.sub === Sub.Compressed) {
      return { sub: Sub.Compressed, length: Math.min(limit, cs - inCluster), host: 0, copied: false, view, index: l2Index };
    }
    const hosted = first.sub === Sub.Normal || first.sub === Sub.ZeroAlloc || first.sub === Sub.UnallocatedAlloc;
    let length = (sc + 1) * ss - inCluster;
    let index = l2Index;
    while (length < limit) {
      if (sc + 1 < cs / ss) sc++;
      else {
        index++;
        sc = 0;
      }
      const next = decode(view, index, sc);
      if (next.invalid || next.sub !== first.sub || next.copied !== first.copied) break;
      if (hosted && next.hostCluster !== first.hostCluster + (index - l2Index) * cs) break;
      length += ss;
    }
    return { sub: first.sub, length: Math.min(length, limit), host: hosted ? first.hostCluster + inCluster : 0, copied: first.copied };
  }

  protected override async _blockStatusList(offset: number, maxLength: number, opts: IoOptions): Promise<Extent[]> {
    const out: Extent[] = [];
    const end = offset + maxLength;
    for (let pos = offset; pos < end && out.length < STATUS_BATCH;) {
      const run = await this.mapRun(pos, end - pos);
      switch (run.sub) {
        case Sub.UnallocatedPlain:
        case Sub.UnallocatedAlloc:
          pos = await this.backingStatus(pos, run, out, opts);
          continue;
        case Sub.Normal:
          await this.dataStatus(pos, run, out, opts);
          break;
        case Sub.ZeroPlain:
          out.push({ offset: pos, length: run.length, data: false, zero: true, present: true, depth: 0 });
          break;
        case Sub.ZeroAlloc:
          out.push({ offset: pos, length: run.length, data: false, zero: true, present: true, depth: 0, hostOffset: run.host, hostFile: this.dataFile.filename });
          break;
        case Sub.Compressed:
          out.push({ offset: pos, length: run.length, data: true, zero: false, present: true, depth: 0, compressed: true });
          break;
      }
      pos += run.length;
    }
    return out;
  }

  /**
   * Unallocated here: what the backing chain says, one level deeper. Without a backing file, or
   * past its end, zeros at depth 0 (QEMU's answer); an unallocated subcluster of an allocated
   * cluster still names its host offset there.
   */
  private async backingStatus(pos: number, run: Run, out: Extent[], opts: IoOptions): Promise<number> {
    const backing = this.backing;
    if (backing && pos < backing.size) {
      const list = await backing.blockStatusList(pos, Math.min(run.length, backing.size - pos), opts);
      for (const e of list) out.push(deeper(e));
      const last = list[list.length - 1]!;
      return last.offset + last.length;
    }
    const e: Extent = { offset: pos, length: run.length, data: false, zero: true, present: false, depth: 0 };
    if (run.sub === Sub.UnallocatedAlloc) [e.hostOffset, e.hostFile] = [run.host, this.dataFile.filename];
    out.push(e);
    return pos + run.length;
  }

  /**
   * A data run. On images with preallocated metadata the host range may still be a hole, which
   * QEMU reports as zero (data and zero); it looks only on such images, and so do we.
   */
  private async dataStatus(pos: number, run: Run, out: Extent[], opts: IoOptions): Promise<void> {
    const hostFile = this.dataFile.filename;
    if (!(await this.hasMetadataPreallocation())) {
      out.push({ offset: pos, length: run.length, data: true, zero: false, present: true, depth: 0, hostOffset: run.host, hostFile });
      return;
    }
    for (let done = 0; done < run.length;) {
      const host = run.host + done;
      if (host >= this.dataFile.size) {
        out.push({ offset: pos + done, length: run.length - done, data: true, zero: true, present: true, depth: 0, hostOffset: host, hostFile });
        return;
      }
      const e = await this.dataFile.blockStatus(host, Math.min(run.length - done, this.dataFile.size - host), opts);
      out.push({ offset: pos + done, length: e.length, data: true, zero: e.zero, present: true, depth: 0, hostOffset: host, hostFile });
      done += e.length;
    }
  }

  /**
   * QEMU's test (qcow2_detect_metadata_preallocation): far more clusters are refcounted than
   * the file has allocated, so allocated clusters may sit on holes.
   */
  private hasMetadataPreallocation(): Promise<boolean> {
    return (this.metadataPreallocation ??= (async () => {
      const file = this.file!;
      const allocated = await file.allocatedSize();
      if (allocated === undefined) return false;
      const refcounts = await this.refcountReader();
      const clusters = Math.ceil(file.size / this.clusterSize);
      let used = 0;
      for (let i = 0; i < clusters; i++) if ((await refcounts.get(i)) > 0) used++;
      const real = Math.floor(allocated / this.clusterSize);
      return used >= Math.max(Math.floor((real * 10) / 9), real + 2);
    })());
  }

  private async refcountReader(): Promise<Refcounts> {
    return (this.refcounts ??= await Refcounts.load(this.file!, this.header, this.filename, this.refcountCacheSize));
  }

  // ---- writes ---------------------------------------------------------------------------

  /** Runs `fn` with the metadata lock held (allocation, L2 and L1 updates, flush). */
  private locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.lock.then(fn);
    this.lock = run.then(() => undefined, () => undefined);
    return run;
  }

  protected override async _write(offset: number, data: Uint8Array): Promise<void> {
    // Overwrites of clusters that are ours alone change no metadata: they run concurrently,
    // outside the lock, as QEMU's do. The first cluster that needs allocation takes the lock.
    let start = 0;
    while (start < data.byteLength) {
      const run = await this.mapRun(offset + start, data.byteLength - start);
      if (run.sub !== Sub.Normal || !run.copied) break;
      await this.inPlace(run.host, data.subarray(start, start + run.length));
      start += run.length;
    }
    if (start === data.byteLength) return;
    await this.locked(async () => {
      for (let done = start; done < data.byteLength;) {
        const pos = offset + done;
        const run = await this.mapRun(pos, data.byteLength - done);
        if (run.sub === Sub.Normal && run.copied) {
          await this.inPlace(run.host, data.subarray(done, done + run.length));
          done += run.length;
          continue;
        }
        const whole = Math.floor(Math.min(run.length, data.byteLength - done) / this.clusterSize);
        if (pos % this.clusterSize === 0 && whole >= 2 && (run.sub === Sub.UnallocatedPlain || run.sub === Sub.ZeroPlain)) {
          done += await this.writeNewClusters(pos, data.subarray(done, done + whole * this.clusterSize));
          continue;
        }
        const n = Math.min(data.byteLength - done, this.clusterSize - (pos % this.clusterSize));
        await this.writeCluster(pos, data.subarray(done, done + n));
        done += n;
      }
      await this.relieveCachePressure();
    });
  }

  /** In-place data writes in flight: a flush lets them land before freed clusters can be reused. */
  private readonly inPlaceWrites = new Set<Promise<void>>();

  private async inPlace(host: number, data: Uint8Array): Promise<void> {
    this.checkHostInFile(host, data.byteLength);
    const write = (async () => {
      await this.checkOverlap(host, data.byteLength);
      await this.dataFile.write(host, data);
      this.dataWritten = true;
    })();
    this.inPlaceWrites.add(write);
    try {
      await write;
    } finally {
      this.inPlaceWrites.delete(write);
    }
  }

  /**
   * Writes into one cluster that is not ours to overwrite: unallocated, zero, compressed or
   * shared. The new host cluster gets the guest data merged with what the cluster read before
   * (copy-on-write), in one write; then the L2 entry points at it; the old one is freed at flush.
   */
  private async writeCluster(pos: number, data: Uint8Array): Promise<void> {
    const cs = this.clusterSize;
    const guestBase = pos - (pos % cs);
    const inCluster = pos - guestBase;
    const { table, entry, view } = await this.entryForWrite(guestBase);
    const old = decode(view, entry, 0);
    const extended = this.extendedL2;
    // With extended L2 only the touched subclusters are written, into the cluster's own slot.
    const partialCluster = extended && (old.sub === Sub.Normal || old.sub === Sub.ZeroAlloc || old.sub === Sub.UnallocatedAlloc || old.sub === Sub.UnallocatedPlain || old.sub === Sub.ZeroPlain) && (old.copied || old.hostCluster === 0);
    const ss = this.subclusterSize;
    const from = partialCluster ? Math.floor(inCluster / ss) * ss : 0;
    const to = partialCluster ? Math.min(Math.ceil((inCluster + data.byteLength) / ss) * ss, cs) : cs;
    const buf = new Uint8Array(to - from);
    const valid = Math.max(0, Math.min(to, this.size - guestBase) - from);
    if (inCluster > from || inCluster + data.byteLength < from + valid) await this._read(guestBase + from, buf.subarray(0, valid), {});
    buf.set(data, inCluster - from);

    const hosted = old.hostCluster !== 0 || (this.hasDataFile && old.copied);
    const reuse = hosted && old.copied && old.sub !== Sub.Compressed && (extended || old.sub === Sub.ZeroAlloc);
    let host: number;
    if (reuse) this.checkHostInFile(old.hostCluster, cs);
    if (reuse) host = old.hostCluster;
    else if (this.hasDataFile) host = guestBase;
    else host = await this.refcounts!.allocate(1);
    await this.checkOverlap(host + from, buf.byteLength);
    await this.dataFile.write(host + from, buf);
    this.dataWritten = true;
    if (!reuse) this.freeOld(old, view, entry);

    const dv = view.dv;
    dv.setBigUint64(entry * this.entryBytes, BigInt(host) | OFLAG_COPIED);
    if (extended) {
      const first = from / ss;
      const last = to / ss;
      let bitmap = partialCluster ? dv.getBigUint64(entry * 16 + 8) : 0n;
      for (let i = first; i < last; i++) bitmap = (bitmap | (1n << BigInt(i))) & ~(1n << BigInt(i + 32));
      if (!partialCluster) bitmap = 0xffffffffn;
      dv.setBigUint64(entry * 16 + 8, bitmap);
    }
    this.tables.markDirty(this.l2OffsetFor(guestBase), table);
  }

  /**
   * Whole clusters that hold nothing yet (unallocated or plain zero): nothing to copy, so they get
   * one contiguous allocation and one data write, as a sequential writer wants.
   */
  private async writeNewClusters(pos: number, data: Uint8Array): Promise<number> {
    const cs = this.clusterSize;
    const count = data.byteLength / cs;
    const host = this.hasDataFile ? pos : await (await this.writableRefcounts()).allocate(count);
    await this.checkOverlap(host, data.byteLength);
    await this.dataFile.write(host, data);
    this.dataWritten = true;
    for (let i = 0; i < count; i++) {
      const { table, entry, view } = await this.entryForWrite(pos + i * cs);
      view.dv.setBigUint64(entry * this.entryBytes, BigInt(host + i * cs) | OFLAG_COPIED);
      if (this.extendedL2) view.dv.setBigUint64(entry * 16 + 8, 0xffffffffn);
      this.tables.markDirty(this.l2OffsetFor(pos + i * cs), table);
    }
    return data.byteLength;
  }

  /**
   * A cluster the image owns lies inside its file (the file grows as clusters are written). An
   * entry pointing past the end is corrupt, and following it would grow the file to wherever
   * it points.
   */
  private checkHostInFile(host: number, length: number): void {
    if (this.hasDataFile) return;
    const fileEnd = Math.ceil(this.file!.size / this.clusterSize) * this.clusterSize;
    if (host + length > fileEnd) {
      throw this.corruption(`a cluster at host offset 0x${host.toString(16)} lies past the end of the file (0x${fileEnd.toString(16)})`);
    }
  }

  /** Drops this image's reference to the host cluster(s) an entry held (at the next flush). */
  private freeOld(old: Decoded, view: EntryView, entry: number): void {
    if (this.hasDataFile) return;
    if (old.sub === Sub.Compressed) {
      const r = compressedRange(view, entry);
      const first = Math.floor(r.sectorsStart / this.clusterSize);
      const last = Math.floor((r.sectorsStart + r.sectorsLength - 1) / this.clusterSize);
      this.refcounts!.free(first * this.clusterSize, last - first + 1);
    } else if (old.hostCluster !== 0) {
      this.refcounts!.free(old.hostCluster, 1);
    }
  }

  private get hasDataFile(): boolean {
    return this.dataFile !== this.file;
  }

  private get entryBytes(): number {
    return this.extendedL2 ? 16 : 8;
  }

  private l2OffsetFor(guest: number): number {
    return this.tables.l1[Math.floor(guest / this.clusterSize / this.l2Entries)]!;
  }

  /** The L2 table and entry for a guest cluster, with the table made writable (allocated or copied). */
  private async entryForWrite(guest: number): Promise<{ table: Uint8Array; entry: number; view: EntryView }> {
    const clusterIndex = Math.floor(guest / this.clusterSize);
    const { table } = await this.tables.forWrite(Math.floor(clusterIndex / this.l2Entries), await this.writableRefcounts());
    const view: EntryView = {
      dv: new DataView(table.buffer, table.byteOffset, table.byteLength),
      extendedL2: this.extendedL2,
      hasDataFile: this.hasDataFile,
      clusterBits: this.header.clusterBits,
    };
    return { table, entry: clusterIndex % this.l2Entries, view };
  }

  private async writableRefcounts(): Promise<Refcounts> {
    return this.refcountReader();
  }

  /**
   * Zeroes whole clusters (subclusters with extended L2) through the zero flag or bitmap; a part
   * of a cluster that does not already read as zeros is refused, and the generic layer writes
   * zero data instead. v2 images have no zero flag: without a backing file the cluster is freed.
   */
  protected override async _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    if (opts.allocate) throw new NotSupportedError('qcow2: preallocating zero writes is not supported yet', this.ctx('write-zeroes', offset, length));
    await this.locked(async () => {
      const cs = this.clusterSize;
      for (let pos = offset; pos < offset + length;) {
        const guestBase = pos - (pos % cs);
        const end = Math.min(guestBase + cs, offset + length);
        // The image's last cluster counts as whole when the request runs to the end of the image.
        const whole = pos === guestBase && (end === guestBase + cs || end === this.size);
        await this.zeroCluster(guestBase, pos - guestBase, end - pos, whole, !!opts.mayUnmap);
        pos = end;
      }
      await this.relieveCachePressure();
    });
    if (this.header.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW) {
      // A raw data file must stay a faithful raw image of the guest.
      await this.dataFile.writeZeroes(offset, length, { mayUnmap: opts.mayUnmap });
    }
  }

  private async zeroCluster(guestBase: number, inCluster: number, length: number, whole: boolean, mayUnmap: boolean): Promise<void> {
    const backing = this.backing !== undefined;
    const current = await this.mapRun(guestBase + inCluster, length);
    const isZero = current.sub === Sub.ZeroPlain || current.sub === Sub.ZeroAlloc;
    const emptyHere = (current.sub === Sub.UnallocatedPlain || current.sub === Sub.UnallocatedAlloc) && !backing;
    if (isZero && current.length >= length) return;
    if (this.extendedL2) {
      if (emptyHere && current.length >= length && !whole) return;
      return this.zeroSubclusters(guestBase, inCluster, length, mayUnmap);
    }
    // Part of a cluster that is empty anyway: QEMU marks the whole cluster zero, and so do we.
    if (!whole && !(emptyHere && this.header.version >= 3 && (await this.mapRun(guestBase, this.clusterSize)).length >= Math.min(this.clusterSize, this.size - guestBase))) {
      throw new NotSupportedError('qcow2: zeroing part of a cluster', this.ctx('write-zeroes', guestBase + inCluster, length));
    }
    if (emptyHere && this.header.version === 2) return;
    const { table, entry, view } = await this.entryForWrite(guestBase);
    const old = decode(view, entry, 0);
    let next: bigint;
    if (this.header.version === 2) {
      if (backing) throw new NotSupportedError('qcow2 v2: no zero clusters over a backing file', this.ctx('write-zeroes', guestBase, length));
      next = 0n;
      this.freeOld(old, view, entry);
    } else if (mayUnmap || old.sub === Sub.Compressed || !old.copied || old.hostCluster === 0) {
      next = OFLAG_ZERO;
      this.freeOld(old, view, entry);
    } else {
      // Keep the host cluster, reading as zeros (ZERO_ALLOC), as QEMU does without unmap.
      next = BigInt(old.hostCluster) | OFLAG_COPIED | OFLAG_ZERO;
    }
    if (this.hasDataFile && next !== 0n && old.copied) next |= OFLAG_COPIED;
    view.dv.setBigUint64(entry * 8, next);
    this.tables.markDirty(this.l2OffsetFor(guestBase), table);
  }

  private async zeroSubclusters(guestBase: number, inCluster: number, length: number, mayUnmap: boolean): Promise<void> {
    const cs = this.clusterSize;
    const ss = this.subclusterSize;
    const validEnd = Math.min(cs, this.size - guestBase);
    const first = Math.ceil(inCluster / ss);
    const end = inCluster + length;
    const last = end >= validEnd ? 32 : Math.floor(end / ss);
    if (first * ss !== inCluster || (last < 32 && last * ss !== end) || first >= last) {
      throw new NotSupportedError('qcow2: zeroing part of a subcluster', this.ctx('write-zeroes', guestBase + inCluster, length));
    }
    const { table, entry, view } = await this.entryForWrite(guestBase);
    const old = decode(view, entry, 0);
    const dv = view.dv;
    const hosted = old.hostCluster !== 0 || (this.hasDataFile && old.copied);
    if (first === 0 && last === 32 && (mayUnmap || !old.copied || old.sub === Sub.Compressed || !hosted)) {
      this.freeOld(old, view, entry);
      dv.setBigUint64(entry * 16, this.hasDataFile && hosted ? OFLAG_COPIED : 0n);
      dv.setBigUint64(entry * 16 + 8, 0xffffffff00000000n);
    } else {
      if (old.sub === Sub.Compressed || (hosted && !old.copied)) {
        throw new NotSupportedError('qcow2: zeroing subclusters of a shared cluster', this.ctx('write-zeroes', guestBase + inCluster, length));
      }
      let bitmap = dv.getBigUint64(entry * 16 + 8);
      for (let i = first; i < last; i++) bitmap = (bitmap & ~(1n << BigInt(i))) | (1n << BigInt(i + 32));
      dv.setBigUint64(entry * 16 + 8, bitmap);
    }
    this.tables.markDirty(this.l2OffsetFor(guestBase), table);
  }

  /**
   * Discards whole clusters, as QEMU's qcow2 does for a guest discard: v3 images read zeros
   * afterwards (the zero flag, or all-zero subclusters); v2 images fall back to the backing file.
   * Freed host clusters are punched out of the file at the next flush.
   */
  protected override async _discard(offset: number, length: number): Promise<void> {
    // A raw data file must keep the guest's bytes: discarding changes nothing there. A v2 image
    // over a backing file has no zero flag, and unallocating would bring the backing data back.
    if (this.header.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW) return;
    if (this.header.version === 2 && this.backing) return;
    await this.locked(async () => {
      const cs = this.clusterSize;
      for (let guestBase = offset; guestBase < offset + length; guestBase += cs) {
        const { table, entry, view } = await this.entryForWrite(guestBase);
        const old = decode(view, entry, 0);
        const allocated = old.hostCluster !== 0 || old.sub === Sub.Compressed || (this.hasDataFile && old.copied);
        if (!this.backing && !allocated) continue;
        this.freeOld(old, view, entry);
        if (this.extendedL2) {
          view.dv.setBigUint64(entry * 16, 0n);
          view.dv.setBigUint64(entry * 16 + 8, 0xffffffff00000000n);
        } else {
          view.dv.setBigUint64(entry * 8, this.header.version >= 3 ? OFLAG_ZERO : 0n);
        }
        this.tables.markDirty(this.l2OffsetFor(guestBase), table);
      }
      if (this.hasDataFile) await this.dataFile.discard(offset, Math.min(length, this.dataFile.size - offset));
      await this.relieveCachePressure();
    });
  }

  protected override async _flush(): Promise<void> {
    await this.locked(() => this.flushMetadata());
  }

  /**
   * Puts everything on disk in the order that keeps every crash harmless (QEMU's cache
   * dependencies): guest data, then refcount increments, then L2 tables, then L1; only then
   * the frees, whose clusters can be reused and punched once nothing on disk points at them.
   */
  private async flushMetadata(): Promise<void> {
    const file = this.file!;
    if (this.dataWritten) {
      await this.dataFile.flush();
      this.dataWritten = false;
    }
    const refcounts = this.refcounts;
    if (refcounts && (await refcounts.writeBack())) await file.flush();
    if (await this.tables.writeL2s()) await file.flush();
    if (await this.tables.writeL1()) await file.flush();
    if (refcounts?.hasPendingFrees) {
      // An in-place write that mapped a cluster before it was freed must land before the cluster
      // can be handed out again.
      await Promise.allSettled([...this.inPlaceWrites]);
      const freed = await refcounts.applyFrees();
      await file.flush();
      for (const index of freed) {
        if ((index + 1) * this.clusterSize <= file.size) await file.discard(index * this.clusterSize, this.clusterSize);
      }
    }
    await file.flush();
  }

  /** Dirty tables are pinned in memory; past the cache's size they go to disk. */
  private async relieveCachePressure(): Promise<void> {
    if (this.tables.dirtyBytes > this.l2CacheBytes) await this.flushMetadata();
  }

  protected override async _close(): Promise<void> {
    if (this.readOnly) return;
    await this.locked(() => this.flushMetadata());
  }

  /**
   * Grows or shrinks the virtual disk (qemu-img resize). Growing past what the L1 table covers
   * moves it to a larger place first; shrinking unallocates the clusters past the new end.
   * Images with snapshots keep their size, as QEMU insists for shrinking.
   */
  protected override async _resize(size: number): Promise<void> {
    const h = this.header;
    if (this.snapshots.length > 0 && size < h.size) {
      throw new NotSupportedError("qcow2: can't shrink an image which has snapshots", this.ctx('resize'));
    }
    await this.locked(async () => {
      const cs = this.clusterSize;
      if (size < h.size) {
        // Whole clusters past the new end become unallocated; the kept part of a partial last
        // cluster stays, as QEMU leaves it.
        for (let guestBase = Math.ceil(size / cs) * cs; guestBase < h.size; guestBase += cs) {
          const l2 = this.tables.l1[Math.floor(guestBase / cs / this.l2Entries)] ?? 0;
          if (l2 === 0) continue;
          const { table, entry, view } = await this.entryForWrite(guestBase);
          this.freeOld(decode(view, entry, 0), view, entry);
          view.dv.setBigUint64(entry * this.entryBytes, 0n);
          if (this.extendedL2) view.dv.setBigUint64(entry * 16 + 8, 0n);
          this.tables.markDirty(this.l2OffsetFor(guestBase), table);
        }
      }
      const needed = Math.ceil(size / cs / this.l2Entries);
      await this.flushMetadata();
      const header = new Uint8Array(24);
      const dv = new DataView(header.buffer);
      dv.setBigUint64(0, BigInt(size));
      dv.setUint32(8, h.cryptMethod);
      let l1Size = h.l1Size;
      let l1Offset = h.l1TableOffset;
      if (needed > h.l1Size) {
        // A new, larger L1 on free clusters, on disk before the header points at it.
        const refcounts = await this.writableRefcounts();
        const clusters = Math.ceil((needed * 8) / cs);
        l1Offset = await refcounts.allocate(clusters);
        await refcounts.writeBack();
        await this.file!.flush();
        await this.tables.moveL1(l1Offset, needed);
        await this.file!.flush();
        refcounts.free(h.l1TableOffset, Math.ceil((h.l1Size * 8) / cs));
        l1Size = needed;
      }
      dv.setUint32(12, l1Size);
      dv.setBigUint64(16, BigInt(l1Offset));
      await this.file!.write(24, header);
      await this.file!.flush();
      Object.assign(h, { size, l1Size, l1TableOffset: l1Offset });
      this.metadata = undefined;
      await this.flushMetadata();
      if (this.hasDataFile && size > this.dataFile.size) await this.dataFile.resize(size);
    });
  }

  // ---- check ----------------------------------------------------------------------------

  /**
   * qemu-img check: counts every reference, compares with the refcounts and repairs what `fix`
   * allows. Runs with the metadata lock held, after a flush, so disk and memory agree.
   */
  async check(fix: CheckFix = 'none'): Promise<CheckResult> {
    if (fix !== 'none' && this.readOnly) throw new BlockError('EROFS', 'Repairing needs the image open for writing', this.ctx('check'));
    return this.locked(async () => {
      if (!this.readOnly) await this.flushMetadata();
      const h = this.header;
      const result = await checkQcow2({
        file: this.file!,
        header: h,
        clusterSize: this.clusterSize,
        size: h.size,
        l1Entries: () => this.tables.l1Entries(),
        snapshotL1s: () => this.snapshots.map((s) => ({ offset: s.l1TableOffset, size: s.l1Size })),
        snapshotTable: () => (h.nbSnapshots > 0 ? { offset: h.snapshotsOffset, length: this.snapshotTableLength } : undefined),
        readTable: (offset) => this.tables.get(offset),
        refcounts: await this.refcountReader(),
        setCopied: async (kind, table, index, copied) => {
          if (kind === 'l1') return this.tables.setL1Copied(index, copied);
          const t = await this.tables.get(table);
          const dv = new DataView(t.buffer, t.byteOffset, t.byteLength);
          const at = index * this.entryBytes;
          dv.setUint32(at, copied ? dv.getUint32(at) | 0x80000000 : dv.getUint32(at) & 0x7fffffff);
          this.tables.markDirty(table, t);
        },
      }, fix);
      if (!this.readOnly) await this.flushMetadata();
      return result;
    });
  }

  /** Clears incompatible-feature bits (dirty, corrupt) once the image is consistent again. */
  async clearIncompatible(bits: bigint): Promise<void> {
    const h = this.header;
    if (h.version < 3 || (h.incompatibleFeatures & bits) === 0n) return;
    await this.locked(async () => {
      await this.flushMetadata();
      const field = new Uint8Array(8);
      new DataView(field.buffer).setBigUint64(0, h.incompatibleFeatures & ~bits);
      await this.file!.write(72, field);
      await this.file!.flush();
      h.incompatibleFeatures &= ~bits;
    });
  }

  // ---- overlap check ----------------------------------------------------------------------

  private metadata: { clusters: Set<number>; tables: number; refcounts: number } | undefined;

  /**
   * QEMU's overlap check for data writes: a corrupt L2 entry may point at metadata (the header,
   * L1, L2 or refcount tables, snapshot tables), and writing guest data there would destroy it.
   * Such a write is refused and the image marked corrupt, as QEMU does.
   */
  private async checkOverlap(host: number, length: number): Promise<void> {
    if (this.hasDataFile || length === 0) return;
    const refcounts = await this.refcountReader();
    const cs = this.clusterSize;
    if (!this.metadata || this.metadata.tables !== this.tables.version || this.metadata.refcounts !== refcounts.version) {
      const clusters = new Set<number>();
      const add = (offset: number, bytes: number) => {
        for (let c = Math.floor(offset / cs); c <= Math.floor((offset + Math.max(bytes, 1) - 1) / cs); c++) clusters.add(c);
      };
      add(0, cs);
      add(this.tables.l1Offset, this.tables.l1.length * 8);
      for (const l2 of this.tables.l1) if (l2) add(l2, cs);
      const reftable = refcounts.tableRange;
      add(reftable.offset, reftable.clusters * cs);
      for (const block of refcounts.table) if (block) add(block, cs);
      if (this.header.nbSnapshots > 0) add(this.header.snapshotsOffset, this.snapshotTableLength);
      for (const s of this.snapshots) add(s.l1TableOffset, s.l1Size * 8);
      this.metadata = { clusters, tables: this.tables.version, refcounts: refcounts.version };
    }
    for (let c = Math.floor(host / cs); c <= Math.floor((host + length - 1) / cs); c++) {
      if (this.metadata.clusters.has(c)) {
        await this.markCorrupt();
        throw this.corruption(`preventing an invalid write on metadata at host offset 0x${(c * cs).toString(16)}; the image is now marked corrupt`);
      }
    }
  }

  /** Sets the corrupt bit, so neither vdisk nor QEMU writes this image again before a repair. */
  private async markCorrupt(): Promise<void> {
    const h = this.header;
    if (h.version < 3 || h.incompatibleFeatures & INCOMPAT.CORRUPT) return;
    h.incompatibleFeatures |= INCOMPAT.CORRUPT;
    const field = new Uint8Array(8);
    new DataView(field.buffer).setBigUint64(0, h.incompatibleFeatures);
    await this.file!.write(72, field);
    await this.file!.flush();
  }

  private corruption(what: string): BlockError {
    return new BlockError('E_CORRUPT', `qcow2 image '${this.filename}' is corrupt: ${what}`, this.ctx('read'));
  }
}

/** An extent of the backing chain as seen from one level up (a literal: this runs per extent). */
function deeper(e: Extent): Extent {
  const out: Extent = { offset: e.offset, length: e.length, data: e.data, zero: e.zero, present: e.present, depth: e.depth + 1 };
  if (e.compressed !== undefined) out.compressed = e.compressed;
  if (e.hostOffset !== undefined) out.hostOffset = e.hostOffset;
  if (e.hostFile !== undefined) out.hostFile = e.hostFile;
  return out;
}
