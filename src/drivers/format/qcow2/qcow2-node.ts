import { BlockNode, type NodeOptions } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import type { Extent, IoOptions } from '../../../core/types.js';
import { decompressCluster, type CompressionType } from './compression.js';
import { INCOMPAT, L1E_OFFSET_MASK, L1E_RESERVED_MASK } from './constants.js';
import type { Qcow2Header } from './header.js';
import { compressedRange, decode, Sub, type EntryView } from './l2-entry.js';
import { Refcounts } from './refcounts.js';
import { snapshotInfoJson, snapshotTableHuman, type Qcow2Snapshot } from './snapshots.js';
import { TableCache } from './table-cache.js';

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
  /** L2 table offsets by L1 index (0: no table). */
  private readonly l1: number[];
  private readonly l2Cache: TableCache;
  private readonly dataFile: BlockNode;
  private refcounts: Refcounts | undefined;
  private readonly refcountCacheSize: number;
  /** Whether data extents must be checked against holes in the host file (see blockStatus). */
  private metadataPreallocation: Promise<boolean> | undefined;
  private lastCompressed: { offset: number; data: Promise<Uint8Array> } | undefined;

  private constructor(parts: Qcow2Parts, l1: number[], opts: Qcow2Options) {
    super({ ...opts, readOnly: true });
    const h = parts.header;
    this.header = h;
    this.children.set('file', parts.file);
    if (parts.dataFile !== parts.file) this.children.set('data-file', parts.dataFile);
    if (parts.backing) this.children.set('backing', parts.backing);
    this.dataFile = parts.dataFile;
    this.snapshots = parts.snapshots;
    this.compression = parts.compression;
    this.clusterSize = 2 ** h.clusterBits;
    this.extendedL2 = (h.incompatibleFeatures & INCOMPAT.EXTL2) !== 0n;
    this.l2Entries = this.clusterSize / (this.extendedL2 ? 16 : 8);
    this.subclusterSize = this.extendedL2 ? this.clusterSize / 32 : this.clusterSize;
    this.l1 = l1;
    this.size = parts.snapshot?.diskSize ?? h.size;
    const l2Needed = Math.ceil(h.size / this.clusterSize / this.l2Entries) * this.clusterSize;
    this.l2Cache = new TableCache(opts.l2CacheSize ?? Math.min(DEFAULT_L2_CACHE_MAX, Math.max(l2Needed, this.clusterSize)), (offset) => this.loadTable(offset, 'L2 table'));
    this.refcountCacheSize = opts.refcountCacheSize ?? DEFAULT_REFCOUNT_CACHE;
    this.limits = { ...this.limits, optTransfer: this.clusterSize };
  }

  static async open(parts: Qcow2Parts, opts: Qcow2Options = {}): Promise<Qcow2Node> {
    const h = parts.header;
    const path = parts.file.filename;
    const l1Offset = parts.snapshot?.l1TableOffset ?? h.l1TableOffset;
    const l1Size = parts.snapshot?.l1Size ?? h.l1Size;
    const bytes = l1Size * 8;
    if (l1Offset + bytes > parts.file.size) {
      throw new BlockError('E_CORRUPT', `qcow2 image '${path}' is corrupt: the L1 table lies past the end of the file`, { op: 'open', path });
    }
    const raw = new Uint8Array(bytes);
    if (bytes > 0) await parts.file.read(l1Offset, raw);
    const dv = new DataView(raw.buffer);
    const clusterSize = 2 ** h.clusterBits;
    const l1: number[] = [];
    for (let i = 0; i < l1Size; i++) {
      const e = dv.getBigUint64(i * 8);
      const off = Number(e & L1E_OFFSET_MASK);
      if (e & L1E_RESERVED_MASK || off % clusterSize !== 0) {
        throw new BlockError('E_CORRUPT', `qcow2 image '${path}' is corrupt: L1 entry ${i} (0x${e.toString(16)}) is invalid`, { op: 'open', path });
      }
      l1.push(off);
    }
    return new Qcow2Node(parts, l1, opts);
  }

  override get filename(): string {
    return this.file!.filename;
  }

  override formatSpecific(): Record<string, unknown> {
    const h = this.header;
    if (h.version === 2) return { compat: '0.10', 'compression-type': this.compression, 'refcount-bits': 2 ** h.refcountOrder };
    const data: Record<string, unknown> = {
      compat: '1.1',
      'compression-type': this.compression,
      'lazy-refcounts': (h.compatibleFeatures & 1n) !== 0n,
      'refcount-bits': 2 ** h.refcountOrder,
      corrupt: (h.incompatibleFeatures & INCOMPAT.CORRUPT) !== 0n,
      'extended-l2': this.extendedL2,
    };
    if (h.incompatibleFeatures & INCOMPAT.DATA_FILE) {
      if (h.dataFile !== undefined) data['data-file'] = h.dataFile;
      data['data-file-raw'] = (h.autoclearFeatures & 2n) !== 0n;
    }
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
    const l2Offset = this.l1[l1Index] ?? 0;
    if (l2Offset === 0) return { sub: Sub.UnallocatedPlain, length: limit, host: 0 };
    const table = await this.l2Cache.get(l2Offset);
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
      return { sub: Sub.Compressed, length: Math.min(limit, cs - inCluster), host: 0, view, index: l2Index };
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
      if (next.invalid || next.sub !== first.sub) break;
      if (hosted && next.hostCluster !== first.hostCluster + (index - l2Index) * cs) break;
      length += ss;
    }
    return { sub: first.sub, length: Math.min(length, limit), host: hosted ? first.hostCluster + inCluster : 0 };
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

  private async loadTable(offset: number, what: string): Promise<Uint8Array> {
    const file = this.file!;
    if (offset + this.clusterSize > file.size) throw this.corruption(`${what} at 0x${offset.toString(16)} lies past the end of the file`);
    const table = new Uint8Array(this.clusterSize);
    await file.read(offset, table);
    this.debugEvent('l2.load', { offset });
    return table;
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
