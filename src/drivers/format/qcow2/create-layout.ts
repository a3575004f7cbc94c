import { BlockError } from '../../../core/errors.js';
import { AUTOCLEAR, COMPAT, INCOMPAT } from './constants.js';
import { ClusterRuns } from './create-clusters.js';
import { l1EntriesFor, type Qcow2CreateParams } from './create-options.js';
import type { HeaderImage } from './header-writer.js';

/*
 * Where QEMU puts every structure of a new image, worked out by replaying what qemu-img create
 * does (block/qcow2.c qcow2_co_create, qcow2_co_truncate, preallocate_co; qcow2-refcount.c and
 * qcow2-cluster.c for the allocator) on an in-memory model, so that the files vdisk writes have
 * QEMU's layout: same offsets, same file length, same stale bytes.
 *
 * Creation in QEMU runs in steps that each go through the ordinary allocator:
 *   1. cluster 0 = header, cluster 1 = a one-cluster refcount table whose entry 0 points at
 *      cluster 2 = the first (empty) refcount block; then clusters 0–2 are allocated.
 *   2. The image is resized to its virtual size: the L1 table gets exactly size_to_l1 entries,
 *      allocated at the first free clusters and written with exactly that many bytes (so a file
 *      can end mid-cluster).
 *   3. Preallocation: `metadata` allocates, L2 table by L2 table, the table and then its data
 *      clusters (never written, but for QEMU's copy-on-write of the tail of a last partial
 *      cluster); `falloc`/`full` first lay out a new refcount table with refcount blocks for
 *      everything at the end of the file, then the data clusters after it, then the L2 tables
 *      wherever the allocator finds room (the first one in the freed old refcount table).
 * The allocator's quirks all show in the result: refcount blocks placed after the range being
 * allocated, retried allocations after every new refcount block, a refcount table that grows
 * by half again, freed clusters reused first, and freed refcount tables left on disk as they were.
 */

const INT_MAX = 2 ** 31 - 1;
/** BDRV_REQUEST_MAX_BYTES: the largest request QEMU's block layer passes down. */
const REQUEST_MAX_BYTES = Math.floor(INT_MAX / 512) * 512;
/** QCOW_MAX_REFTABLE_SIZE, which QEMU compares both with entry counts and with entries. */
const MAX_REFTABLE = 8 * 1024 * 1024;
const INV = -1;
/** update_refcount() and friends return -EAGAIN when a new refcount block may sit where the caller meant to allocate. */
const AGAIN = false;
const OK = true;

/**
 * qcow2_refcount_metadata_size(): the refcount blocks and refcount table clusters needed to count
 * `clusters` clusters and themselves (a fixed point); `generous` adds room for growth as QEMU
 * does when it enlarges a refcount table. Shared with measure, which sizes images the same way.
 */
export function refcountMetadataClusters(clusters: number, clusterSize: number, refcountOrder: number, generous: boolean): { blocks: number; table: number } {
  const blocksPerTableCluster = clusterSize / 8;
  const refblockEntries = (clusterSize * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / refblockEntries);
    table = Math.ceil(blocks / blocksPerTableCluster);
    n = clusters + blocks + table;
    if (n === last && generous) {
      clusters += Math.ceil(table / 2);
      n = 0;
      generous = false;
    }
  } while (n !== last);
  return { blocks, table };
}

export interface ByteRange {
  offset: number;
  length: number;
}

/** What one file (the image, or its external data file) ends up holding besides the metadata pieces. */
export interface PlannedFile {
  length: number;
  /** Ranges preallocation=falloc reserves with fallocate. */
  falloc: ByteRange[];
  /** Ranges written with zeros: preallocation=full, and the copy-on-write of a last partial cluster. */
  zeros: ByteRange[];
}

/** One write into the image file, in the order of precedence stale < zero < metadata. */
export type Piece =
  | { kind: 'stale'; offset: number; length: number; entries: readonly number[] }
  | { kind: 'zero'; offset: number; length: number }
  | { kind: 'header'; offset: number; length: number }
  | { kind: 'reftable'; offset: number; length: number }
  | { kind: 'refblock'; offset: number; length: number; index: number }
  | { kind: 'l1'; offset: number; length: number }
  | { kind: 'l2'; offset: number; length: number; l1Index: number };

interface L2Meta {
  guest: number;
  host: number;
  clusters: number;
  cowEndFrom: number;
}

/** The layout of a new image: run `build()` once, then read the header, the pieces and the files. */
export class Qcow2Layout {
  readonly clusterSize: number;
  readonly l2Entries: number;
  readonly l2EntrySize: number;
  readonly refblockEntries: number;
  private readonly subclusterSize: number;

  /** Clusters whose refcount is 1 (a new image has no other non-zero refcount). */
  private readonly used = new ClusterRuns();
  reftable: number[];
  reftableOffset: number;
  private maxReftableIndex = 0;
  private freeClusterIndex = 0;
  /** Refcount tables QEMU freed: their clusters keep the old entries unless something overwrites them. */
  readonly staleReftables: { offset: number; entries: readonly number[] }[] = [];

  l1Size = 0;
  l1Offset = 0;
  /** L2 table offset per L1 index (0 = none); entries carry the COPIED flag on disk. */
  l1 = new Float64Array(0);
  /** Per L1 index, the mapped runs as flat triples (first L2 index, count, host offset). */
  readonly l2Runs = new Map<number, number[]>();

  readonly file: PlannedFile;
  readonly data: PlannedFile | undefined;

  constructor(readonly params: Qcow2CreateParams) {
    const cs = 2 ** params.clusterBits;
    this.clusterSize = cs;
    this.l2EntrySize = params.extendedL2 ? 16 : 8;
    this.l2Entries = cs / this.l2EntrySize;
    this.subclusterSize = params.extendedL2 ? cs / 32 : cs;
    this.refblockEntries = (cs * 8) / 2 ** params.refcountOrder;
    this.reftable = new Array<number>(cs / 8).fill(0);
    this.reftable[0] = 2 * cs;
    this.reftableOffset = cs;
    this.file = { length: 3 * cs, falloc: [], zeros: [] };
    this.data = params.dataFile === undefined ? undefined : { length: 0, falloc: [], zeros: [] };
  }

  build(): this {
    const p = this.params;
    const cs = this.clusterSize;
    if (this.allocClusters(3 * cs) !== 0) throw new Error('qcow2 create: the first clusters of an empty image are in use');
    this.growL1(l1EntriesFor(p.size, p.clusterBits, p.extendedL2));
    switch (p.preallocation) {
      case 'off':
        if (this.data) this.data.length = Math.max(this.data.length, p.size);
        break;
      case 'metadata':
        this.preallocate('metadata');
        break;
      case 'falloc':
      case 'full':
        if (this.data) this.preallocate(p.preallocation);
        else this.preallocateInFile(p.preallocation);
        break;
    }
    return this;
  }

  /** The header as QEMU leaves it at the end of creation. */
  header(): HeaderImage {
    const p = this.params;
    let incompatible = 0n;
    if (p.dataFile !== undefined) incompatible |= INCOMPAT.DATA_FILE;
    if (p.compressionType !== 0) incompatible |= INCOMPAT.COMPRESSION;
    if (p.extendedL2) incompatible |= INCOMPAT.EXTL2;
    return {
      version: p.version,
      clusterBits: p.clusterBits,
      size: p.size,
      l1Size: this.l1Size,
      l1TableOffset: this.l1Offset,
      refcountTableOffset: this.reftableOffset,
      refcountTableClusters: (this.reftable.length * 8) / this.clusterSize,
      incompatibleFeatures: incompatible,
      compatibleFeatures: p.lazyRefcounts ? COMPAT.LAZY_REFCOUNTS : 0n,
      autoclearFeatures: p.dataFileRaw ? AUTOCLEAR.DATA_FILE_RAW : 0n,
      refcountOrder: p.refcountOrder,
      compressionType: p.compressionType,
      backingFile: p.backingFile,
      backingFormat: p.backingFormat,
      dataFile: p.dataFile,
    };
  }

  /** Every write into the image file, sorted by offset (stale before zero before metadata at one offset). */
  pieces(): Piece[] {
    const cs = this.clusterSize;
    const out: Piece[] = [];
    for (const s of this.staleReftables) out.push({ kind: 'stale', offset: s.offset, length: s.entries.length * 8, entries: s.entries });
    for (const z of this.file.zeros) out.push({ kind: 'zero', offset: z.offset, length: z.length });
    out.push({ kind: 'header', offset: 0, length: cs });
    out.push({ kind: 'reftable', offset: this.reftableOffset, length: this.reftable.length * 8 });
    this.reftable.forEach((off, index) => {
      if (off) out.push({ kind: 'refblock', offset: off, length: cs, index });
    });
    if (this.l1Size > 0) out.push({ kind: 'l1', offset: this.l1Offset, length: this.l1Size * 8 });
    this.l1.forEach((off, l1Index) => {
      if (off) out.push({ kind: 'l2', offset: off, length: cs, l1Index });
    });
    const rank = { stale: 0, zero: 1 } as Record<string, number>;
    return out.sort((a, b) => a.offset - b.offset || (rank[a.kind] ?? 2) - (rank[b.kind] ?? 2));
  }

  /** Refcount of every allocated cluster in [first, first + count), for rendering refcount blocks. */
  forEachUsed(first: number, count: number, fn: (start: number, end: number) => void): void {
    this.used.forEachIn(first, first + count, (s, e) => void fn(s, e));
  }

  // --- qcow2-refcount.c ------------------------------------------------------------------------

  private extendFile(end: number): void {
    if (end > this.file.length) this.file.length = end;
  }

  private refblockPresent(clusterIndex: number): boolean {
    const ti = Math.floor(clusterIndex / this.refblockEntries);
    return ti < this.reftable.length && this.reftable[ti] !== 0;
  }

  /** First cluster in [a, b) whose refcount (as qcow2_get_refcount reads it) is not 0, or -1. */
  private firstUsed(a: number, b: number): number {
    let found = -1;
    this.used.forEachIn(a, b, (s, e) => {
      for (let c = s; c < e; c = (Math.floor(c / this.refblockEntries) + 1) * this.refblockEntries) {
        if (this.refblockPresent(c)) {
          found = c;
          return false;
        }
      }
      return true;
    });
    return found;
  }

  private allocClustersNoref(clusters: number): number {
    for (;;) {
      const a = this.freeClusterIndex;
      const x = this.firstUsed(a, a + clusters);
      if (x < 0) {
        this.freeClusterIndex = a + clusters;
        return a * this.clusterSize;
      }
      this.freeClusterIndex = x + 1;
    }
  }

  private updateRefcount(offset: number, length: number, decrease: boolean): boolean {
    if (length === 0) return OK;
    const cs = this.clusterSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    for (let c = first; c <= last;) {
      const end = Math.min(last + 1, (Math.floor(c / this.refblockEntries) + 1) * this.refblockEntries);
      if (this.allocRefcountBlock(c) === AGAIN) {
        // The caller searches again, starting with the same clusters; this call's changes are undone.
        if (this.freeClusterIndex > first) this.freeClusterIndex = first;
        this.updateRefcount(offset, c * cs - offset, !decrease);
        return AGAIN;
      }
      if (decrease) {
        this.used.remove(c, end);
        if (c < this.freeClusterIndex) this.freeClusterIndex = c;
      } else {
        this.used.add(c, end);
      }
      c = end;
    }
    return OK;
  }

  private allocRefcountBlock(clusterIndex: number): boolean {
    const cs = this.clusterSize;
    const ti = Math.floor(clusterIndex / this.refblockEntries);
    if (ti < this.reftable.length && this.reftable[ti]) return OK;
    const newBlock = this.allocClustersNoref(1);
    if (newBlock === 0) throw new Error('qcow2 create: refcount block at offset 0');
    const newIndex = newBlock / cs;
    if (Math.floor(newIndex / this.refblockEntries) === ti) {
      // The block describes itself.
      this.used.add(newIndex, newIndex + 1);
    } else if (this.updateRefcount(newBlock, cs, false) === AGAIN) {
      return AGAIN;
    }
    this.extendFile(newBlock + cs);
    if (ti < this.reftable.length) {
      this.reftable[ti] = newBlock;
      this.maxReftableIndex = Math.max(this.maxReftableIndex, ti);
      return AGAIN;
    }
    // The table is too small: new self-describing refcount structures go after everything covered so far.
    const blocksUsed = Math.ceil(Math.max(clusterIndex + 1, newIndex + 1) / this.refblockEntries);
    this.refcountArea(blocksUsed * this.refblockEntries * cs, 0, false, ti, newBlock);
    return AGAIN;
  }

  /** qcow2_refcount_area(): a new refcount table and blocks at `start` (the end of the file). */
  private refcountArea(start: number, additionalClusters: number, exactSize: boolean, newIndex: number, newOffset: number): number {
    const cs = this.clusterSize;
    const total = refcountMetadataClusters(start / cs + additionalClusters, cs, this.params.refcountOrder, !exactSize).blocks;
    const areaIndex = Math.floor(start / cs / this.refblockEntries);
    let tableSize = exactSize ? total : total + Math.ceil(total / 2);
    tableSize = Math.ceil(tableSize / (cs / 8)) * (cs / 8);
    if (total > MAX_REFTABLE || tableSize > MAX_REFTABLE) {
      throw new BlockError('ERANGE', `Could not create '${this.params.filename}': the refcount table would be too large (File too large)`, { op: 'create', path: this.params.filename });
    }
    const tableClusters = (tableSize * 8) / cs;
    const table = new Array<number>(tableSize).fill(0);
    const copy = tableSize > this.maxReftableIndex ? this.maxReftableIndex + 1 : tableSize;
    for (let i = 0; i < copy && i < this.reftable.length; i++) table[i] = this.reftable[i]!;
    if (newOffset) table[newIndex] = newOffset;
    let newBlocks = 0;
    for (let i = areaIndex; i < total; i++) if (!table[i]) newBlocks++;
    const tableOffset = start + newBlocks * cs;
    const end = tableOffset + tableClusters * cs;
    let blockOffset = start;
    for (let i = areaIndex; i < total; i++) {
      if (!table[i]) {
        table[i] = blockOffset;
        blockOffset += cs;
      }
    }
    this.used.add(start / cs, end / cs);
    this.extendFile(end);
    const old = { offset: this.reftableOffset, entries: this.reftable };
    this.reftable = table;
    this.reftableOffset = tableOffset;
    let i = table.length - 1;
    while (i > 0 && !table[i]) i--;
    this.maxReftableIndex = i;
    this.staleReftables.push(old);
    this.updateRefcount(old.offset, old.entries.length * 8, true);
    return end;
  }

  private allocClusters(size: number): number {
    const clusters = Math.ceil(size / this.clusterSize);
    for (;;) {
      const offset = this.allocClustersNoref(clusters);
      if (this.updateRefcount(offset, size, false) === OK) return offset;
    }
  }

  private allocClustersAt(offset: number, clusters: number): number {
    if (clusters === 0) return 0;
    const first = offset / this.clusterSize;
    for (;;) {
      const x = this.firstUsed(first, first + clusters);
      const n = x < 0 ? clusters : x - first;
      if (this.updateRefcount(offset, n * this.clusterSize, false) === OK) return n;
    }
  }

  /** qcow2_get_last_cluster(): the last cluster below `size` bytes with a refcount, or -1. */
  private lastCluster(size: number): number {
    let c = Math.ceil(size / this.clusterSize) - 1;
    while (c >= 0) {
      const last = this.used.lastBelow(c + 1);
      if (last < 0) return -1;
      if (this.refblockPresent(last)) return last;
      c = last - 1;
    }
    return -1;
  }

  // --- qcow2-cluster.c ---------------------------------------------------------------------------

  private growL1(entries: number): void {
    if (entries <= this.l1Size) return;
    const offset = this.allocClusters(entries * 8);
    this.extendFile(offset + entries * 8);
    this.l1 = new Float64Array(entries);
    this.l1Size = entries;
    this.l1Offset = offset;
  }

  /** get_cluster_table(): makes sure the L2 table for `guest` exists. */
  private l2Table(guest: number): number {
    const l1Index = Math.floor(guest / (this.clusterSize * this.l2Entries));
    if (l1Index >= this.l1Size) throw new Error(`qcow2 create: guest offset ${guest} is beyond the L1 table`);
    if (!this.l1[l1Index]) {
      const offset = this.allocClusters(this.clusterSize);
      if (offset === 0) throw new Error('qcow2 create: L2 table at offset 0');
      this.extendFile(offset + this.clusterSize);
      this.l1[l1Index] = offset;
      this.l2Runs.set(l1Index, []);
    }
    return l1Index;
  }

  private mapClusters(guest: number, host: number, clusters: number): void {
    const l1Index = this.l2Table(guest);
    const l2Index = (guest / this.clusterSize) % this.l2Entries;
    this.l2Runs.get(l1Index)!.push(l2Index, clusters, host);
  }

  /** qcow2_alloc_host_offset() for a range of a new image (no cluster is allocated yet). */
  private allocHostOffset(offset: number, bytes: number): { host: number; bytes: number; metas: L2Meta[] } {
    const cs = this.clusterSize;
    let start = offset;
    let remaining = bytes;
    let clusterOffset = INV;
    let host = INV;
    let cur = 0;
    const metas: L2Meta[] = [];
    for (;;) {
      if (host === INV && clusterOffset !== INV) host = clusterOffset;
      start += cur;
      remaining -= cur;
      if (clusterOffset !== INV) clusterOffset += cur;
      if (remaining === 0) break;
      cur = remaining;
      // handle_copied() loads (and so allocates) the L2 table first; it finds nothing to keep.
      this.l2Table(start);
      // handle_alloc()
      const inCluster = start % cs;
      const l2Index = Math.floor(start / cs) % this.l2Entries;
      let clusters = Math.min(Math.ceil((inCluster + cur) / cs), this.l2Entries - l2Index, Math.floor(REQUEST_MAX_BYTES / cs));
      let alloc: number;
      if (this.data) {
        alloc = start - inCluster;
      } else if (clusterOffset === INV) {
        alloc = this.allocClusters(clusters * cs);
      } else {
        alloc = clusterOffset - (clusterOffset % cs);
        clusters = this.allocClustersAt(alloc, clusters);
      }
      if (clusters === 0) break;
      const nbBytes = Math.min(cur + inCluster, clusters * cs);
      clusterOffset = alloc + inCluster;
      cur = Math.min(cur, nbBytes - inCluster);
      metas.push({ guest: start - inCluster, host: alloc, clusters: Math.ceil((inCluster + cur) / cs), cowEndFrom: inCluster + cur });
    }
    return { host, bytes: bytes - remaining, metas };
  }

  /** preallocate_co(): metadata for the whole disk; with a data file also the data file's size. */
  private preallocate(mode: 'metadata' | 'falloc' | 'full'): void {
    const cs = this.clusterSize;
    const target = this.data ?? this.file;
    const chunk = Math.floor(INT_MAX / cs) * cs;
    let offset = 0;
    let bytes = this.params.size;
    let host = 0;
    let cur = 0;
    while (bytes > 0) {
      const r = this.allocHostOffset(offset, Math.min(bytes, chunk));
      host = r.host;
      cur = r.bytes;
      for (const m of r.metas) {
        // perform_cow(): the tail of a last partial (sub)cluster is copied from "below", i.e. zeros.
        const cowEndTo = Math.ceil(m.cowEndFrom / this.subclusterSize) * this.subclusterSize;
        if (cowEndTo > m.cowEndFrom) {
          target.zeros.push({ offset: m.host + m.cowEndFrom, length: cowEndTo - m.cowEndFrom });
          target.length = Math.max(target.length, m.host + cowEndTo);
        }
        this.mapClusters(m.guest, m.host, m.clusters);
      }
      bytes -= cur;
      offset += cur;
    }
    const end = host + cur;
    if (end > target.length) {
      // bdrv_co_truncate() of the file holding the data, preallocating only for falloc/full.
      if (mode === 'falloc') target.falloc.push({ offset: target.length, length: end - target.length });
      if (mode === 'full') target.zeros.push({ offset: target.length, length: end - target.length });
      target.length = end;
    }
  }

  /** The falloc/full branch of qcow2_co_truncate() for an image without a data file. */
  private preallocateInFile(mode: 'falloc' | 'full'): void {
    const cs = this.clusterSize;
    const last = this.lastCluster(this.file.length);
    const oldFileSize = last >= 0 ? (last + 1) * cs : Math.ceil(this.file.length / cs) * cs;
    const dataClusters = Math.ceil(this.params.size / cs);
    // One L2 table more than needed: the range need not be aligned to L2 boundaries.
    const l2Tables = Math.ceil(dataClusters / this.l2Entries) + 1;
    const allocationStart = this.refcountArea(oldFileSize, dataClusters + l2Tables, true, 0, 0);
    if (this.allocClustersAt(allocationStart, dataClusters) !== dataClusters) throw new Error('qcow2 create: data area is not free');
    const newFileSize = allocationStart + dataClusters * cs;
    if (newFileSize > this.file.length) {
      const range = { offset: this.file.length, length: newFileSize - this.file.length };
      (mode === 'falloc' ? this.file.falloc : this.file.zeros).push(range);
      this.file.length = newFileSize;
    }
    let host = allocationStart;
    let guest = 0;
    for (let n = dataClusters; n > 0;) {
      const clusters = Math.min(n, this.l2Entries - ((guest / cs) % this.l2Entries));
      this.mapClusters(guest, host, clusters);
      guest += clusters * cs;
      host += clusters * cs;
      n -= clusters;
    }
  }
}

/** Replays qemu-img create for these parameters. */
export function planQcow2Layout(params: Qcow2CreateParams): Qcow2Layout {
  return new Qcow2Layout(params).build();
}
