/**
 * A tiny qcow2 parser and byte editor for damaging images on purpose (test/interop check tests).
 * It is independent of vdisk's driver (a checker must not be tested with its own reading of the
 * format): header fields by their spec offsets (/work/shared/specs/qcow2.md §2), L1/L2 entries
 * (§6-7) and refcounts (§5), read from and written to a whole-file buffer. Images stay small, so
 * the whole file is held in memory; `save()` writes it back (to the same or another path).
 */
import { readFile, truncate, writeFile } from 'node:fs/promises';

const OFFSET_MASK = 0x00fffffffffffe00n;
export const COPIED = 1n << 63n;
export const COMPRESSED = 1n << 62n;

/** One allocated (non-compressed) L2 entry of the active L1, with where it lives. */
export interface DataEntry {
  /** Guest cluster number. */
  guestCluster: number;
  l1Index: number;
  l2Offset: number;
  l2Index: number;
  /** Byte offset of the entry in the file. */
  at: number;
  entry: bigint;
  host: number;
}

export class Qcow2Bytes {
  private constructor(readonly file: string, readonly buf: Buffer) {}

  static async load(file: string): Promise<Qcow2Bytes> {
    const buf = await readFile(file);
    if (buf.readUInt32BE(0) !== 0x514649fb) throw new Error(`${file} is not qcow2`);
    return new Qcow2Bytes(file, buf);
  }

  async save(file = this.file): Promise<void> {
    await writeFile(file, this.buf);
  }

  u64(at: number): bigint {
    return this.buf.readBigUInt64BE(at);
  }

  setU64(at: number, v: bigint): void {
    this.buf.writeBigUInt64BE(v, at);
  }

  get clusterBits(): number { return this.buf.readUInt32BE(20); }
  get clusterSize(): number { return 2 ** this.clusterBits; }
  get size(): number { return Number(this.u64(24)); }
  get l1Size(): number { return this.buf.readUInt32BE(36); }
  get l1Offset(): number { return Number(this.u64(40)); }
  get refcountTableOffset(): number { return Number(this.u64(48)); }
  get refcountTableClusters(): number { return this.buf.readUInt32BE(56); }
  get nbSnapshots(): number { return this.buf.readUInt32BE(60); }
  get snapshotsOffset(): number { return Number(this.u64(64)); }
  get incompatible(): bigint { return this.u64(72); }
  get refcountBits(): number { return 2 ** this.buf.readUInt32BE(96); }
  get extendedL2(): boolean { return (this.incompatible & (1n << 4n)) !== 0n; }
  get entryBytes(): number { return this.extendedL2 ? 16 : 8; }
  get l2Entries(): number { return this.clusterSize / this.entryBytes; }
  get fileClusters(): number { return Math.ceil(this.buf.byteLength / this.clusterSize); }

  l1At(i: number): number { return this.l1Offset + i * 8; }
  l1Entry(i: number): bigint { return this.u64(this.l1At(i)); }
  setL1Entry(i: number, v: bigint): void { this.setU64(this.l1At(i), v); }

  /** Byte offset of the refcount block that holds `cluster`'s refcount; throws where there is none. */
  refcountBlockOf(cluster: number): number {
    const perBlock = (this.clusterSize * 8) / this.refcountBits;
    const block = Number(this.u64(this.refcountTableOffset + Math.floor(cluster / perBlock) * 8) & ~0x1ffn);
    if (block === 0) throw new Error(`cluster ${cluster} has no refcount block`);
    return block;
  }

  refcount(cluster: number): number {
    const bits = this.refcountBits;
    const perBlock = (this.clusterSize * 8) / bits;
    const block = this.refcountBlockOf(cluster);
    const i = cluster % perBlock;
    if (bits >= 8) return Number(this.buf.readUIntBE(block + (i * bits) / 8, bits / 8));
    const perByte = 8 / bits;
    return (this.buf[block + Math.floor(i / perByte)]! >> ((i % perByte) * bits)) & ((1 << bits) - 1);
  }

  setRefcount(cluster: number, value: number): void {
    const bits = this.refcountBits;
    const perBlock = (this.clusterSize * 8) / bits;
    const block = this.refcountBlockOf(cluster);
    const i = cluster % perBlock;
    if (value >= 2 ** bits) throw new Error(`refcount ${value} does not fit ${bits} bits`);
    if (bits >= 8) return void this.buf.writeUIntBE(value, block + (i * bits) / 8, bits / 8);
    const perByte = 8 / bits;
    const at = block + Math.floor(i / perByte);
    const shift = (i % perByte) * bits;
    this.buf[at] = (this.buf[at]! & ~(((1 << bits) - 1) << shift)) | (value << shift);
  }

  /** The refcount blocks the refcount table names (byte offsets). */
  refcountBlocks(): number[] {
    const out: number[] = [];
    for (let i = 0; i < (this.refcountTableClusters * this.clusterSize) / 8; i++) {
      const e = Number(this.u64(this.refcountTableOffset + i * 8) & ~0x1ffn);
      if (e !== 0) out.push(e);
    }
    return out;
  }

  /** Active L2 tables, by L1 index. */
  l2Tables(): { l1Index: number; offset: number }[] {
    const out: { l1Index: number; offset: number }[] = [];
    for (let i = 0; i < this.l1Size; i++) {
      const off = Number(this.l1Entry(i) & OFFSET_MASK);
      if (off !== 0) out.push({ l1Index: i, offset: off });
    }
    return out;
  }

  /** The entries of the active tables that point at a host cluster (not compressed). */
  dataEntries(): DataEntry[] {
    const out: DataEntry[] = [];
    for (const { l1Index, offset } of this.l2Tables()) {
      for (let j = 0; j < this.l2Entries; j++) {
        const at = offset + j * this.entryBytes;
        const entry = this.u64(at);
        const host = Number(entry & OFFSET_MASK);
        if (entry & COMPRESSED || host === 0) continue;
        out.push({ guestCluster: l1Index * this.l2Entries + j, l1Index, l2Offset: offset, l2Index: j, at, entry, host });
      }
    }
    return out;
  }

  /** Compressed entries of the active tables, with the host clusters their sectors touch (spec §6). */
  compressedEntries(): { at: number; entry: bigint; clusters: number[] }[] {
    const out: { at: number; entry: bigint; clusters: number[] }[] = [];
    const x = 62n - BigInt(this.clusterBits - 8);
    for (const { offset } of this.l2Tables()) {
      for (let j = 0; j < this.l2Entries; j++) {
        const at = offset + j * this.entryBytes;
        const entry = this.u64(at);
        if (!(entry & COMPRESSED)) continue;
        const coffset = Number(entry & ((1n << x) - 1n));
        const sectors = Number((entry >> x) & ((1n << BigInt(this.clusterBits - 8)) - 1n)) + 1;
        const start = Math.floor(coffset / 512) * 512;
        const clusters: number[] = [];
        for (let c = Math.floor(start / this.clusterSize); c <= Math.floor((start + sectors * 512 - 1) / this.clusterSize); c++) clusters.push(c);
        out.push({ at, entry, clusters });
      }
    }
    return out;
  }

  /** Host clusters inside the file with refcount 0. */
  freeClusters(): number[] {
    const out: number[] = [];
    for (let c = 0; c < this.fileClusters; c++) if (this.refcount(c) === 0) out.push(c);
    return out;
  }

  /** The snapshot table's entries (spec §8): where each entry is, and its L1 table. */
  snapshotEntries(): { at: number; l1Offset: number; l1Size: number }[] {
    const out: { at: number; l1Offset: number; l1Size: number }[] = [];
    let at = this.snapshotsOffset;
    for (let i = 0; i < this.nbSnapshots; i++) {
      out.push({ at, l1Offset: Number(this.u64(at)), l1Size: this.buf.readUInt32BE(at + 8) });
      const length = 40 + this.buf.readUInt32BE(at + 36) + this.buf.readUInt16BE(at + 12) + this.buf.readUInt16BE(at + 14);
      at += Math.ceil(length / 8) * 8;
    }
    return out;
  }

  /**
   * What each host cluster of an image WITHOUT snapshots holds, from the active tables:
   * 'data' (plain or compressed guest data), 'l2', 'free' (refcount 0), or 'meta' (header,
   * refcount table and blocks, L1 table).
   */
  clusterKinds(): ('data' | 'l2' | 'free' | 'meta')[] {
    if (this.nbSnapshots !== 0) throw new Error('clusterKinds reads the active tables only; this image has snapshots');
    type Kind = 'data' | 'l2' | 'free' | 'meta';
    const kinds = Array.from({ length: this.fileClusters }, (_, c): Kind => (this.refcount(c) === 0 ? 'free' : 'meta'));
    const set = (c: number, k: 'data' | 'l2') => { if (c < kinds.length) kinds[c] = k; };
    for (const t of this.l2Tables()) set(t.offset / this.clusterSize, 'l2');
    for (const d of this.dataEntries()) set(Math.floor(d.host / this.clusterSize), 'data');
    for (const e of this.compressedEntries()) for (const c of e.clusters) set(c, 'data');
    return kinds;
  }

  /** The last L2 table (by file offset) after which the file holds only data and free clusters. */
  lastL2Table(): number {
    const kinds = this.clusterKinds();
    const last = lastIndex(kinds, (k) => k !== 'data' && k !== 'free');
    if (kinds[last] !== 'l2') throw new Error(`the file's last metadata cluster (${last}) is ${kinds[last]}, not an L2 table`);
    return last * this.clusterSize;
  }

  /**
   * A length to cut the file to that splits a data cluster in two and drops the next one whole,
   * with only data (or free clusters) from the split one on: "cut in the middle of data".
   */
  cutInData(): number {
    const kinds = this.clusterKinds();
    const last = lastIndex(kinds, (k) => k === 'data');
    if (last < 1 || kinds[last - 1] !== 'data' || kinds.slice(last - 1).some((k) => k !== 'data' && k !== 'free')) {
      throw new Error('the image does not end with two data clusters');
    }
    return last * this.clusterSize - this.clusterSize / 2;
  }
}

function lastIndex<T>(items: readonly T[], pred: (item: T) => boolean): number {
  for (let i = items.length - 1; i >= 0; i--) if (pred(items[i]!)) return i;
  return -1;
}

/** Cuts `file` to `length` bytes. */
export async function cutFile(file: string, length: number): Promise<void> {
  await truncate(file, length);
}
