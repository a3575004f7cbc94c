import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import { L1E_OFFSET_MASK, L1E_RESERVED_MASK, OFLAG_COPIED } from './constants.js';
import type { Refcounts } from './refcounts.js';
import { TableCache } from './table-cache.js';

/** How the L2 tables are cached: in slices of `sliceBytes` (QEMU's l2-cache-entry-size). */
export interface L2CacheLayout {
  clusterSize: number;
  /** Bytes per L2 entry (16 with extended L2). */
  entryBytes: number;
  /** A power of two from 512 to the cluster size. */
  sliceBytes: number;
  /** Slices the cache keeps. */
  cacheEntries: number;
}

/**
 * The L1 table and the L2 tables it points to (spec §6). L2 tables are cached in slices, as
 * QEMU does: with a cache too small for the whole image, a miss reads 4 KiB instead of a whole
 * cluster. Changed slices stay in the cache, pinned, until writeL2s/writeL1 put them on disk in
 * the order the node's flush decides.
 */
export class Qcow2Tables {
  /** L2 table offsets by L1 index (0: none). */
  readonly l1: number[];
  /** The COPIED bit of each L1 entry: the L2 table is ours alone and may change in place. */
  private readonly l1Copied: boolean[];
  /**
   * Reserved bits set in L1 entries, by index: damage QEMU reads past and writes back as it
   * found it, until the entry gets a new L2 table.
   */
  private readonly l1Reserved: Map<number, bigint>;
  private l1Dirty = false;
  /** Bumped whenever an L2 table moves or appears (the node's overlap check rebuilds then). */
  version = 0;
  readonly sliceBytes: number;
  /** L2 entries per slice. */
  readonly sliceEntries: number;
  private readonly clusterSize: number;
  private readonly cache: TableCache;

  private constructor(
    private readonly file: BlockNode,
    layout: L2CacheLayout,
    private l1TableOffset: number,
    entries: { l1: number[]; copied: boolean[]; reserved: Map<number, bigint> },
    onLoad: (offset: number, length: number) => void,
  ) {
    this.l1 = entries.l1;
    this.l1Copied = entries.copied;
    this.l1Reserved = entries.reserved;
    this.clusterSize = layout.clusterSize;
    this.sliceBytes = layout.sliceBytes;
    this.sliceEntries = layout.sliceBytes / layout.entryBytes;
    const { clusterSize, sliceBytes } = layout;
    this.cache = new TableCache(sliceBytes, layout.cacheEntries, async (offset, into) => {
      const table = offset - (offset % clusterSize);
      if (table + clusterSize > file.size) {
        throw new BlockError('E_CORRUPT', `qcow2 image '${file.filename}' is corrupt: L2 table at 0x${table.toString(16)} lies past the end of the file`, { op: 'read', path: file.filename });
      }
      await file.read(offset, into);
      onLoad(offset, sliceBytes);
    });
  }

  static async load(file: BlockNode, layout: L2CacheLayout, l1Offset: number, l1Size: number, onLoad: (offset: number, length: number) => void): Promise<Qcow2Tables> {
    const path = file.filename;
    const bytes = l1Size * 8;
    if (l1Offset + bytes > file.size) {
      throw new BlockError('E_CORRUPT', `qcow2 image '${path}' is corrupt: the L1 table lies past the end of the file`, { op: 'open', path });
    }
    const raw = new Uint8Array(bytes);
    if (bytes > 0) await file.read(l1Offset, raw);
    const dv = new DataView(raw.buffer);
    const l1: number[] = [];
    const copied: boolean[] = [];
    const reserved = new Map<number, bigint>();
    for (let i = 0; i < l1Size; i++) {
      const e = dv.getBigUint64(i * 8);
      // Reserved bits are ignored, as QEMU ignores them (check reports them), and kept.
      if (e & L1E_RESERVED_MASK) reserved.set(i, e & L1E_RESERVED_MASK);
      l1.push(Number(e & L1E_OFFSET_MASK));
      copied.push((e & OFLAG_COPIED) !== 0n);
    }
    return new Qcow2Tables(file, layout, l1Offset, { l1, copied, reserved }, onLoad);
  }

  get l1Offset(): number {
    return this.l1TableOffset;
  }

  /**
   * The slice `slice` of the L2 table at `l2Offset` when it is cached (marked used); valid until
   * the caller's next await. The read path's fast way: no promise on a hit.
   */
  peekSlice(l2Offset: number, slice: number): Uint8Array | undefined {
    return this.cache.peek(l2Offset + slice * this.sliceBytes);
  }

  /** Runs `fn` over slice `slice` of the L2 table at `l2Offset`, loading it if needed. */
  useSlice<T>(l2Offset: number, slice: number, fn: (slice: Uint8Array) => T): Promise<T> {
    return this.cache.use(l2Offset + slice * this.sliceBytes, fn);
  }

  /**
   * Slice `slice` of the L2 table for L1 entry `index`, ready to be changed (and marked dirty,
   * so it stays at this buffer until written): a new table when there is none, a copy when it is
   * shared with a snapshot (the shared one loses our reference at the next flush).
   */
  async forWrite(index: number, slice: number, refcounts: Refcounts): Promise<Uint8Array> {
    const current = this.l1[index] ?? 0;
    if (current !== 0 && this.l1Copied[index]) return this.cache.modify(current + slice * this.sliceBytes);
    const count = this.clusterSize / this.sliceBytes;
    let old: Uint8Array | undefined;
    if (current !== 0) {
      // Read before allocating: a table that cannot be read must not leave a new one behind.
      const copy = (old = new Uint8Array(this.clusterSize));
      for (let s = 0; s < count; s++) await this.useSlice(current, s, (t) => copy.set(t, s * this.sliceBytes));
    }
    const offset = await refcounts.allocate(1);
    // Every slice of the new cluster is written: it may hold anything from an earlier life.
    const slices: Uint8Array[] = [];
    for (let s = 0; s < count; s++) {
      const created = this.cache.create(offset + s * this.sliceBytes);
      if (old) created.set(old.subarray(s * this.sliceBytes, (s + 1) * this.sliceBytes));
      slices.push(created);
    }
    if (current !== 0) refcounts.free(current, 1);
    this.l1[index] = offset;
    this.l1Reserved.delete(index);
    this.l1Copied[index] = true;
    this.l1Dirty = true;
    this.version++;
    return slices[slice]!;
  }

  /**
   * The whole L2 table at `offset` for qemu-img check, as a copy: read from disk (check runs
   * after a flush), with the slices changed since laid over it. The cached clean slices are
   * dropped, because check repairs some entries by writing the file directly.
   */
  async readForCheck(offset: number): Promise<Uint8Array> {
    const table = new Uint8Array(this.clusterSize);
    await this.file.read(offset, table);
    for (let at = 0; at < this.clusterSize; at += this.sliceBytes) this.cache.drop(offset + at);
    for (const [key, slice] of this.cache.dirty()) {
      if (key >= offset && key < offset + this.clusterSize) table.set(slice, key - offset);
    }
    return table;
  }

  /** Sets or clears the COPIED flag of entry `index` of the L2 table at `offset` (check repairs). */
  async setL2Copied(offset: number, index: number, copied: boolean, entryBytes: number): Promise<void> {
    const slice = await this.cache.modify(offset + Math.floor(index / this.sliceEntries) * this.sliceBytes);
    const dv = new DataView(slice.buffer, slice.byteOffset, slice.byteLength);
    const at = (index % this.sliceEntries) * entryBytes;
    dv.setUint32(at, copied ? dv.getUint32(at) | 0x80000000 : dv.getUint32(at) & 0x7fffffff);
  }

  /** The active L1 entries as they would be written (offset | COPIED, and reserved bits found there). */
  l1Entries(): bigint[] {
    return this.l1.map((off, i) => BigInt(off) | (off !== 0 && this.l1Copied[i] ? OFLAG_COPIED : 0n) | (this.l1Reserved.get(i) ?? 0n));
  }

  setL1Copied(index: number, copied: boolean): void {
    this.l1Copied[index] = copied;
    this.l1Dirty = true;
  }

  get dirtyBytes(): number {
    return this.cache.dirtyCount * this.sliceBytes;
  }

  /** Writes the changed L2 slices; returns whether anything was written. */
  async writeL2s(): Promise<boolean> {
    const dirty = this.cache.dirty();
    if (dirty.length === 0) return false;
    for (const [offset, slice] of dirty) {
      await this.file.write(offset, slice);
      this.cache.markClean(offset);
    }
    this.cache.trim();
    return true;
  }

  /** Writes the L1 table if it changed; returns whether it did. */
  async writeL1(): Promise<boolean> {
    if (!this.l1Dirty) return false;
    const raw = new Uint8Array(this.l1.length * 8);
    const dv = new DataView(raw.buffer);
    this.l1Entries().forEach((e, i) => dv.setBigUint64(i * 8, e));
    await this.file.write(this.l1TableOffset, raw);
    this.l1Dirty = false;
    return true;
  }

  /**
   * Moves the L1 table to `offset` with `entries` entries (growing), writing it there first; the
   * caller then points the header at it.
   */
  async moveL1(offset: number, entries: number): Promise<void> {
    while (this.l1.length < entries) {
      this.l1.push(0);
      this.l1Copied.push(false);
    }
    this.l1TableOffset = offset;
    this.l1Dirty = true;
    await this.writeL1();
  }

  /**
   * Forgets every L2 table: the caller rebuilt the image empty, with an all-zero L1 table of the
   * same size at `offset` (make-empty). Nothing may be unwritten.
   */
  reset(offset: number): void {
    this.l1.fill(0);
    this.l1Copied.fill(false);
    this.l1Reserved.clear();
    this.l1TableOffset = offset;
    this.l1Dirty = false;
    this.cache.clear();
    this.version++;
  }

  /** Drops cached slices nobody used since the last call (cache-clean-interval); returns how many. */
  cleanUnused(): number {
    return this.cache.cleanUnused();
  }
}
