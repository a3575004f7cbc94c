import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import { L1E_OFFSET_MASK, L1E_RESERVED_MASK, OFLAG_COPIED } from './constants.js';
import type { Refcounts } from './refcounts.js';
import { TableCache } from './table-cache.js';

/**
 * The L1 table and the L2 tables it points to (spec §6). Changed tables stay in memory, pinned,
 * until writeL2s/writeL1 put them on disk in the order the node's flush decides.
 */
export class Qcow2Tables {
  get l1Offset(): number {
    return this.l1TableOffset;
  }

  /**
   * Moves the L1 table to `offset` with `entries` entries (growing), writing it there first; the
   * caller then points the header at it. Returns the bytes of the new table.
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

  /** L2 table offsets by L1 index (0: none). */
  readonly l1: number[];
  /** The COPIED bit of each L1 entry: the L2 table is ours alone and may change in place. */
  private readonly l1Copied: boolean[];
  private l1Dirty = false;
  /** Bumped whenever an L2 table moves or appears (the node's overlap check rebuilds then). */
  version = 0;
  private readonly cache: TableCache;
  private readonly dirty = new Map<number, Uint8Array>();

  private constructor(
    private readonly file: BlockNode,
    private readonly clusterSize: number,
    private l1TableOffset: number,
    l1: number[],
    l1Copied: boolean[],
    cacheBytes: number,
    onLoad: (offset: number) => void,
  ) {
    this.l1 = l1;
    this.l1Copied = l1Copied;
    this.cache = new TableCache(cacheBytes, async (offset) => {
      if (offset + clusterSize > file.size) {
        throw new BlockError('E_CORRUPT', `qcow2 image '${file.filename}' is corrupt: L2 table at 0x${offset.toString(16)} lies past the end of the file`, { op: 'read', path: file.filename });
      }
      const table = new Uint8Array(clusterSize);
      await file.read(offset, table);
      onLoad(offset);
      return table;
    });
  }

  static async load(file: BlockNode, clusterSize: number, l1Offset: number, l1Size: number, cacheBytes: number, onLoad: (offset: number) => void): Promise<Qcow2Tables> {
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
    for (let i = 0; i < l1Size; i++) {
      const e = dv.getBigUint64(i * 8);
      const off = Number(e & L1E_OFFSET_MASK);
      if (e & L1E_RESERVED_MASK & ~0x1ffn) {
        throw new BlockError('E_CORRUPT', `qcow2 image '${path}' is corrupt: L1 entry ${i} (0x${e.toString(16)}) is invalid`, { op: 'open', path });
      }
      l1.push(off);
      copied.push((e & OFLAG_COPIED) !== 0n);
    }
    return new Qcow2Tables(file, clusterSize, l1Offset, l1, copied, cacheBytes, onLoad);
  }

  /** The L2 table at `offset`, as the latest writes left it. */
  get(offset: number): Promise<Uint8Array> {
    const d = this.dirty.get(offset);
    return d ? Promise.resolve(d) : this.cache.get(offset);
  }

  /**
   * The L2 table for L1 entry `index`, ready to be changed: a new one when there is none, a copy
   * when it is shared with a snapshot (the shared one loses our reference at the next flush).
   */
  async forWrite(index: number, refcounts: Refcounts): Promise<{ offset: number; table: Uint8Array }> {
    const current = this.l1[index] ?? 0;
    if (current !== 0 && this.l1Copied[index]) return { offset: current, table: await this.get(current) };
    const table = current !== 0 ? (await this.get(current)).slice() : new Uint8Array(this.clusterSize);
    const offset = await refcounts.allocate(1);
    if (current !== 0) refcounts.free(current, 1);
    this.l1[index] = offset;
    this.l1Copied[index] = true;
    this.l1Dirty = true;
    this.version++;
    this.markDirty(offset, table);
    return { offset, table };
  }

  /** The active L1 entries as they would be written (offset | COPIED). */
  l1Entries(): bigint[] {
    return this.l1.map((off, i) => BigInt(off) | (off !== 0 && this.l1Copied[i] ? OFLAG_COPIED : 0n));
  }

  setL1Copied(index: number, copied: boolean): void {
    this.l1Copied[index] = copied;
    this.l1Dirty = true;
  }

  markDirty(offset: number, table: Uint8Array): void {
    this.dirty.set(offset, table);
  }

  get dirtyBytes(): number {
    return this.dirty.size * this.clusterSize;
  }

  /** Writes the changed L2 tables; returns whether anything was written. */
  async writeL2s(): Promise<boolean> {
    if (this.dirty.size === 0) return false;
    for (const [offset, table] of this.dirty) await this.file.write(offset, table);
    for (const [offset, table] of this.dirty) this.cache.put(offset, table);
    this.dirty.clear();
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
}
