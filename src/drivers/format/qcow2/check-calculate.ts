import { INCOMPAT, L1E_OFFSET_MASK, L1E_RESERVED_MASK, MAX_L1_BYTES, OFLAG_COPIED, REFT_OFFSET_MASK } from './constants.js';
import { countBitmaps } from './check-bitmaps.js';
import { errnoText, type CheckContext, type CheckFix } from './check-context.js';
import { InMemoryRefcounts } from './check-imrt.js';
import type { Metadata, RepairGuard } from './check-overlap.js';
import { compressedRange, entryOffset, type EntryView } from './l2-entry.js';

/** An internal snapshot's L1 table, with the id and name check messages give. */
export interface SnapshotL1 {
  id: string;
  name: string;
  offset: number;
  size: number;
}

/** What counting found: the references, and whether the refcount structures must be rebuilt. */
export interface Calculation {
  refs: InMemoryRefcounts;
  rebuild: boolean;
}

/** A refcount block is not worth growing the file by more than this to repair (hostile offsets). */
const MAX_REFBLOCK_GROWTH = 1024 * 1024 * 1024;
const ALL_ALLOC = 0xffffffffn;

/** C's %#x: "0" for zero, else 0x and lowercase hex. */
const altHex = (n: number | bigint) => (n === 0 || n === 0n ? '0' : `0x${n.toString(16)}`);

/**
 * QEMU's calculate_refcounts: counts every reference to every host cluster (header, L1 and L2
 * tables, data, snapshots, refcount table and blocks, persistent bitmaps), reporting what is wrong on the way. With
 * fix 'all' it repairs what cannot wait for the refcounts: a misaligned preallocated entry
 * becomes a zero entry (fix_l2_entry_by_zero), and a refcount block past the end of the file
 * gets the file grown to hold it.
 */
export async function calculateRefcounts(ctx: CheckContext, guard: RepairGuard, snapshots: readonly SnapshotL1[], fix: CheckFix): Promise<Calculation> {
  const walk = new ReferenceWalk(ctx, guard, fix);
  return walk.run(snapshots);
}

class ReferenceWalk {
  private readonly refs: InMemoryRefcounts;
  private rebuild = false;
  private readonly extended: boolean;
  private readonly dataFile: boolean;
  private readonly entrySize: number;

  constructor(private readonly ctx: CheckContext, private readonly guard: RepairGuard, private readonly fix: CheckFix) {
    const h = ctx.t.header;
    this.refs = new InMemoryRefcounts(Math.ceil(ctx.t.file.size / ctx.cs), 2 ** h.refcountOrder);
    this.extended = (h.incompatibleFeatures & INCOMPAT.EXTL2) !== 0n;
    this.dataFile = (h.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n;
    this.entrySize = this.extended ? 16 : 8;
  }

  async run(snapshots: readonly SnapshotL1[]): Promise<Calculation> {
    const { ctx } = this;
    const { t, res, cs } = ctx;
    const h = t.header;
    res.allocatedClusters = res.fragmentedClusters = res.compressedClusters = 0;
    this.count(0, cs);
    await this.walkL1(h.l1TableOffset, h.l1Size, true);
    if (this.dataFile && snapshots.length > 0) this.corrupt(`ERROR ${snapshots.length} snapshots in image with data file`);
    for (const s of snapshots) {
      if (s.offset % cs !== 0) {
        this.corrupt(`ERROR snapshot ${s.id} (${s.name}) l1_offset=${altHex(s.offset)}: L1 table is not cluster aligned; snapshot table entry corrupted`);
      } else if (s.size * 8 > MAX_L1_BYTES) {
        this.corrupt(`ERROR snapshot ${s.id} (${s.name}) l1_size=${altHex(s.size)}: L1 table is too large; snapshot table entry corrupted`);
      } else {
        await this.walkL1(s.offset, s.size, false);
      }
    }
    const snapshotTable = t.snapshotTable();
    if (snapshotTable) this.count(snapshotTable.offset, snapshotTable.length);
    const reftable = t.refcounts.tableRange;
    this.count(reftable.offset, reftable.clusters * cs);
    await countBitmaps(ctx, (offset, length) => this.count(offset, length));
    await this.checkRefblocks(reftable.offset, reftable.clusters * cs);
    return { refs: this.refs, rebuild: this.rebuild };
  }

  private corrupt(message: string, times = 1): void {
    this.ctx.say(message);
    this.ctx.res.corruptions += times;
  }

  /**
   * Counts `times` references to the clusters [offset, offset + length) touches (QEMU's
   * qcow2_inc_refcounts_imrt). A region reaching a cluster or more past the end of the file is
   * an error, not a reference; a count the refcount width cannot hold is an overflow.
   */
  private count(offset: number, length: number, times = 1): void {
    const { ctx } = this;
    if (length <= 0) return;
    if (offset + length - ctx.t.file.size >= ctx.cs) {
      this.corrupt(`ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${offset.toString(16)} size 0x${length.toString(16)}`, times);
      return;
    }
    for (let c = Math.floor(offset / ctx.cs); c <= Math.floor((offset + length - 1) / ctx.cs); c++) {
      const overflow = this.refs.add(c, times);
      if (overflow > 0) {
        this.corrupt(`ERROR: overflow cluster offset=0x${(c * ctx.cs).toString(16)}`, overflow);
        ctx.say('Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing');
      }
    }
  }

  /**
   * One L1 table and everything below it; `active` also gathers the allocation statistics.
   * Each distinct L2 table is walked once and counted as often as the L1 names it: a hostile L1
   * naming one table millions of times must not mean millions of walks.
   */
  private async walkL1(offset: number, size: number, active: boolean): Promise<void> {
    if (size === 0) return;
    this.count(offset, size * 8);
    const raw = await this.ctx.readRaw(offset, size * 8);
    const dv = new DataView(raw.buffer);
    const named = new Map<number, number>();
    for (let i = 0; i < size; i++) {
      const e = dv.getBigUint64(i * 8);
      if (e === 0n) continue;
      const l2 = Number(e & L1E_OFFSET_MASK);
      named.set(l2, (named.get(l2) ?? 0) + 1);
    }
    for (let i = 0; i < size; i++) {
      const e = dv.getBigUint64(i * 8);
      if (e === 0n) continue;
      if (e & L1E_RESERVED_MASK) this.corrupt(`ERROR found L1 entry with reserved bits set: ${e.toString(16)}`);
      const l2 = Number(e & L1E_OFFSET_MASK);
      const times = named.get(l2);
      if (times === undefined) continue; // walked at its first entry
      named.delete(l2);
      this.count(l2, this.ctx.cs, times);
      if (l2 % this.ctx.cs !== 0) this.corrupt(`ERROR l2_offset=${l2.toString(16)}: Table is not cluster aligned; L1 entry corrupted`, times);
      await this.walkL2(l2, times, active);
    }
  }

  /** QEMU's check_refcounts_l2 for a table the L1 names `times` times. */
  private async walkL2(l2Offset: number, times: number, active: boolean): Promise<void> {
    const { ctx } = this;
    const { res, cs } = ctx;
    // A table past the end of the file reads as zeros: nothing in it to count or repair (the L1
    // walk reported it). A damaged L1 can name thousands of them.
    if (l2Offset >= ctx.t.file.size) return;
    const table = await ctx.readL2(l2Offset);
    const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    const view: EntryView = { dv, extendedL2: this.extended, hasDataFile: this.dataFile, clusterBits: ctx.t.header.clusterBits, clusterSize: 2 ** ctx.t.header.clusterBits };
    // The repairs of this table are made before the walk that reports them (see fixByZero); the
    // walk reads `table`, which still holds the entries as they were.
    const zeroed = this.fix === 'all' ? await this.fixByZero(table, l2Offset, active) : undefined;
    let nextContiguous = 0;
    for (let i = 0; i < cs / this.entrySize; i++) {
      const at = i * this.entrySize;
      // The entry's halves as numbers: BigInt per entry made a walk over thousands of tables of
      // a damaged image take seconds. The BigInt is built only for a message.
      const hi = dv.getUint32(at);
      const lo = dv.getUint32(at + 4);
      const bitmap = this.extended ? dv.getBigUint64(at + 8) : 0n;
      if (hi === 0 && lo === 0 && bitmap === 0n) continue;
      const entry = (): bigint => (BigInt(hi) << 32n) | BigInt(lo);
      if (hi & 0x40000000) {
        if (hi & 0x80000000) this.corrupt(`ERROR: coffset=0x${compressedRange(view, i).offset.toString(16)}: copied flag must never be set for compressed clusters`, times);
        if (this.dataFile) {
          this.corrupt(`ERROR compressed cluster ${i} with data file, entry=0x${(entry() & ~OFLAG_COPIED).toString(16)}`, times);
          continue;
        }
        if (bitmap !== 0n) {
          this.corrupt(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${(entry() & ~OFLAG_COPIED).toString(16)}`, times);
          continue;
        }
        const r = compressedRange(view, i);
        this.count(r.offset, r.length, times);
        if (active) {
          res.allocatedClusters += times;
          res.compressedClusters += times;
          // Compressed clusters are fragmented by nature (QEMU counts each one).
          res.fragmentedClusters += times;
        }
        continue;
      }
      const reserved = (hi & 0x3f000000) !== 0 || (lo & 0x1fe) !== 0; // L2E_STD_RESERVED_MASK
      const host = entryOffset(hi, lo);
      const zeroFlag = !this.extended && (lo & 1) !== 0;
      // Offset 0 is "unallocated", except in an external data file, where COPIED tells (QEMU's qcow2_get_cluster_type).
      const allocated = host !== 0 || (this.dataFile && !zeroFlag && (hi & 0x80000000) !== 0);
      if (!allocated) {
        if (reserved) this.corrupt(reservedMessage(entry()), times);
        if (bitmap & ALL_ALLOC) this.corrupt('ERROR: Unallocated cluster has non-zero subcluster allocation map', times);
        continue;
      }
      const misaligned = host % cs !== 0;
      // A preallocated cluster at a misaligned offset holds no data: QEMU makes the entry a zero
      // entry and no longer counts the reference, so only the first walk of the table sees it.
      const fixing = zeroed !== undefined && this.misalignedPreallocated(hi, lo, bitmap);
      const seen = fixing ? 1 : times;
      if (reserved) this.corrupt(reservedMessage(entry()), seen);
      if ((bitmap >> 32n) & bitmap) this.corrupt(`ERROR offset=${host.toString(16)}: Allocated cluster has corrupted subcluster allocation bitmap`, seen);
      if (fixing) {
        ctx.say(`Repairing offset=${host.toString(16)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`);
        if (i === zeroed.clashAt) {
          throw await this.guard.fail(zeroed.clash!, `repairing the L2 entry at 0x${(l2Offset + at).toString(16)}`, 'ERROR: Overlap check failed');
        }
        const error = at < zeroed.writtenUpTo ? zeroed.flushError : zeroed.writeError;
        if (error === undefined) {
          res.corruptionsFixed++;
          continue;
        }
        ctx.say(`ERROR: Failed to overwrite L2 table entry: ${error}`);
        res.checkErrors++;
        res.corruptions += times;
      } else if (misaligned) {
        const data = this.extended ? (bitmap & ALL_ALLOC) !== 0n : !zeroFlag;
        this.corrupt(`ERROR offset=${host.toString(16)}: ${data ? 'Data' : 'Preallocated'} cluster is not properly aligned; L2 entry corrupted.`, times);
      }
      if (active) {
        res.allocatedClusters += times;
        if (nextContiguous !== 0 && host !== nextContiguous) res.fragmentedClusters += times;
        nextContiguous = host + cs;
      }
      if (!this.dataFile) this.count(host, cs, times);
    }
  }

  /**
   * A standard (not compressed) entry that preallocates a cluster at an offset inside a cluster
   * and holds no data there (the ZERO flag; with extended L2, no allocated subcluster): the one
   * damage the walk repairs in place.
   */
  private misalignedPreallocated(hi: number, lo: number, bitmap: bigint): boolean {
    if (hi & 0x40000000 || entryOffset(hi, lo) % this.ctx.cs === 0) return false;
    return this.extended ? (bitmap & ALL_ALLOC) === 0n : (lo & 1) !== 0;
  }

  /**
   * QEMU's fix_l2_entry_by_zero for every misaligned preallocated entry of one L2 table at once:
   * each becomes a zero entry (with extended L2, its allocated subclusters become zero ones).
   * QEMU writes and syncs each entry on its own, a flush per entry (a damaged table can hold
   * thousands); here a table's entries are fixed in a copy and written as runs of adjacent
   * entries, with one flush for the table, before the walk goes on. That is as safe: only the
   * bytes QEMU writes are written, and each 8- or 16-byte entry lies inside one 512-byte sector
   * (an L1 entry can only name a 512-aligned table) and so is written atomically with it: a
   * crash in the middle leaves every entry either as it was (still damaged, and the image still
   * dirty or damaged, so the next check repairs it again) or zeroed, never torn. The flush
   * still puts them on disk before anything after this table is written (the refcount repairs
   * that free what they pointed at above all), which is the order QEMU's per-entry syncs keep.
   *
   * `table` is left as it was, for the walk's messages. Entries are written in order up to the
   * first whose write QEMU's overlap check would refuse (`clashAt`: the walk fails the check
   * there, as QEMU does, after QEMU's writes of the entries before it). A failed write leaves
   * the entries from its run on unrepaired (`writeError`), a failed flush all of them (`flushError`).
   */
  private async fixByZero(table: Uint8Array, l2Offset: number, active: boolean): Promise<ZeroFix> {
    const { ctx, entrySize } = this;
    const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    const fixed = new Uint8Array(table);
    const out = new DataView(fixed.buffer);
    /** Byte ranges [start, end) of adjacent fixed entries. */
    const runs: [number, number][] = [];
    const result: ZeroFix = { writtenUpTo: 0 };
    for (let i = 0; i < ctx.cs / entrySize; i++) {
      const at = i * entrySize;
      const bitmap = this.extended ? dv.getBigUint64(at + 8) : 0n;
      if (!this.misalignedPreallocated(dv.getUint32(at), dv.getUint32(at + 4), bitmap)) continue;
      const clash = this.guard.overlap(l2Offset + at, entrySize, active ? 'active L2 table' : undefined);
      if (clash !== undefined) {
        result.clashAt = i;
        result.clash = clash;
        break;
      }
      if (this.extended) {
        out.setBigUint64(at, 0n);
        out.setBigUint64(at + 8, (bitmap | (bitmap << 32n)) & 0xffffffff00000000n);
      } else {
        out.setBigUint64(at, 1n); // QCOW_OFLAG_ZERO
      }
      const last = runs[runs.length - 1];
      if (last && last[1] === at) last[1] = at + entrySize;
      else runs.push([at, at + entrySize]);
    }
    if (runs.length === 0) return result;
    for (const [start, end] of runs) {
      try {
        await ctx.t.file.write(l2Offset + start, fixed.subarray(start, end));
      } catch (err) {
        result.writeError = errnoText(err);
        break;
      }
      result.writtenUpTo = end;
    }
    if (result.writeError === undefined) result.writtenUpTo = ctx.cs;
    if (result.writtenUpTo === 0) return result;
    try {
      await ctx.t.file.flush();
    } catch (err) {
      result.flushError = errnoText(err);
    }
    return result;
  }

  /** QEMU's check_refblocks: every block aligned, inside the file, and referenced by the table alone. */
  private async checkRefblocks(offset: number, bytes: number): Promise<void> {
    const { ctx } = this;
    const { t, cs } = ctx;
    const raw = await ctx.readRaw(offset, bytes);
    const dv = new DataView(raw.buffer);
    for (let i = 0; i < bytes / 8; i++) {
      const e = dv.getBigUint64(i * 8);
      const block = Number(e & REFT_OFFSET_MASK);
      const cluster = Math.floor(block / cs);
      if (e & ~REFT_OFFSET_MASK) {
        this.corrupt(`ERROR refcount table entry ${i} has reserved bits set`);
        this.rebuild = true;
        continue;
      }
      if (block % cs !== 0) {
        this.corrupt(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
        this.rebuild = true;
        continue;
      }
      if (cluster >= this.refs.length) {
        ctx.say(`${this.fix === 'all' ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`);
        if (this.fix !== 'all') {
          ctx.res.corruptions++;
          continue;
        }
        try {
          if (block + cs - t.file.size > MAX_REFBLOCK_GROWTH) throw new Error(`refusing to grow the file to ${block + cs} bytes`);
          await t.file.resize(block + cs);
        } catch (err) {
          this.corrupt(`ERROR could not resize image: ${errnoText(err)}`);
          this.rebuild = true;
          continue;
        }
        ctx.res.corruptionsFixed++;
        // The block is new and all zeros, so this is its one reference.
        this.count(block, cs);
        continue;
      }
      if (block === 0) continue;
      this.count(block, cs);
      const n = this.refs.get(cluster);
      if (n !== 1) {
        this.corrupt(`ERROR refcount block ${i} refcount=${n}`);
        this.rebuild = true;
      }
    }
  }
}

/** What fixByZero did to one table, for the walk to report entry by entry. */
interface ZeroFix {
  /** Entries before this byte were written (then flushed, unless `flushError`). */
  writtenUpTo: number;
  writeError?: string;
  flushError?: string;
  /** The first entry QEMU's overlap check refuses to write, and what it would overwrite. */
  clashAt?: number;
  clash?: Metadata;
}

const reservedMessage = (entry: bigint) => `ERROR found l2 entry with reserved bits set: ${entry.toString(16)}`;

