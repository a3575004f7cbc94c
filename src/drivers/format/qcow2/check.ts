import type { BlockNode } from '../../../core/block-node.js';
import { INCOMPAT, L2E_OFFSET_MASK, L2E_STD_RESERVED_MASK, MAX_L1_BYTES, OFLAG_COMPRESSED, OFLAG_COPIED } from './constants.js';
import type { Qcow2Header } from './header.js';
import { compressedRange, entryOffset, type EntryView } from './l2-entry.js';
import type { Refcounts } from './refcounts.js';

/** What qemu-img check reports, under its JSON names. */
export interface CheckResult {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  /** The lines qemu-img prints on stderr while checking ("ERROR cluster 3 refcount=0 reference=1"). */
  messages: string[];
}

export type CheckFix = 'none' | 'leaks' | 'all';

/** What the checker needs from an open image. */
export interface CheckTarget {
  file: BlockNode;
  header: Qcow2Header;
  clusterSize: number;
  size: number;
  /** Active L1 entries, raw (with COPIED bits). */
  l1Entries(): bigint[];
  snapshotL1s(): { offset: number; size: number }[];
  snapshotTable(): { offset: number; length: number } | undefined;
  readTable(offset: number): Promise<Uint8Array>;
  refcounts: Refcounts;
  /** Rewrites one active L1/L2 entry (for COPIED repairs). */
  setCopied(kind: 'l1' | 'l2', tableOffset: number, index: number, copied: boolean): Promise<void>;
}

/**
 * Counts every reference to every host cluster (qemu's calculate_refcounts), compares with the
 * stored refcounts over the file's clusters, and repairs what `fix` allows: leaks (refcount too
 * high) and, with 'all', refcounts too low and wrong COPIED flags.
 */
export async function checkQcow2(t: CheckTarget, fix: CheckFix): Promise<CheckResult> {
  const cs = t.clusterSize;
  const h = t.header;
  const res: CheckResult = {
    corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0, imageEndOffset: 0,
    totalClusters: Math.ceil(t.size / cs), allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0, messages: [],
  };
  const refs = new Map<number, number>();
  const refcountMax = h.refcountOrder >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (2 ** h.refcountOrder) - 1;
  // qcow2_inc_refcounts_imrt: a region reaching a cluster or more past the end is an error, not a reference;
  // a count that would not fit the refcount width is an overflow, not stored.
  const ref = (offset: number, length = cs, times = 1) => {
    if (length <= 0) return;
    if (offset + length - t.file.size >= cs) {
      res.messages.push(`ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${offset.toString(16)} size 0x${length.toString(16)}`);
      res.corruptions++;
      return;
    }
    for (let c = Math.floor(offset / cs); c <= Math.floor((offset + length - 1) / cs); c++) {
      const n = refs.get(c) ?? 0;
      if (n + times > refcountMax) {
        res.messages.push(`ERROR: overflow cluster offset=0x${(c * cs).toString(16)}`);
        res.corruptions++;
        refs.set(c, refcountMax);
        continue;
      }
      refs.set(c, n + times);
    }
  };
  /** Table bytes as QEMU's bdrv_pread gives them: at any offset, zeros past the end of the file. */
  const readL2 = async (offset: number): Promise<Uint8Array> => {
    if (offset % cs === 0 && offset + cs <= t.file.size) return t.readTable(offset);
    const buf = new Uint8Array(cs);
    const n = Math.max(0, Math.min(cs, t.file.size - offset));
    if (n > 0) await t.file.read(offset, buf.subarray(0, n));
    return buf;
  };
  const extended = (h.incompatibleFeatures & INCOMPAT.EXTL2) !== 0n;
  const dataFile = (h.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n;
  const entrySize = extended ? 16 : 8;
  const fileClusters = Math.ceil(t.file.size / cs);

  ref(0);
  /** Walks one L1 table and everything below it; `active` also gathers statistics. */
  const walkL1 = async (entries: bigint[], active: boolean) => {
    let nextContiguous = 0;
    // Each distinct L2 table is walked once and counted as often as the L1 names it: a hostile
    // L1 naming one table millions of times must not mean millions of walks.
    const named = new Map<number, number>();
    for (const e of entries) {
      const l2 = Number(e & 0x00fffffffffffe00n);
      if (l2 !== 0) named.set(l2, (named.get(l2) ?? 0) + 1);
    }
    for (const [l2, times] of named) {
      ref(l2, cs, times);
      if (l2 % cs !== 0) {
        res.messages.push(`ERROR l2_offset=${l2.toString(16)}: Table is not cluster aligned; L1 entry corrupted`);
        res.corruptions += times;
      }
      const table = await readL2(l2);
      const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
      const view: EntryView = { dv, extendedL2: extended, hasDataFile: dataFile, clusterBits: h.clusterBits };
      for (let i = 0; i < cs / entrySize; i++) {
        const hi = dv.getUint32(i * entrySize);
        const lo = dv.getUint32(i * entrySize + 4);
        const raw = dv.getBigUint64(i * entrySize);
        const bitmap = extended ? dv.getBigUint64(i * entrySize + 8) : 0n;
        if (hi & 0x40000000) {
          if (hi & 0x80000000) {
            res.messages.push(`ERROR: coffset=0x${compressedRange(view, i).offset.toString(16)}: copied flag must never be set for compressed clusters`);
            res.corruptions += times;
          }
          if (bitmap !== 0n) {
            res.messages.push(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${raw.toString(16)}`);
            res.corruptions += times;
            continue;
          }
          const r = compressedRange(view, i);
          ref(r.sectorsStart, r.sectorsLength, times);
          if (active) {
            res.allocatedClusters += times;
            res.compressedClusters += times;
            res.fragmentedClusters += times;
          }
          continue;
        }
        if (raw & L2E_STD_RESERVED_MASK) {
          res.messages.push(`ERROR found l2 entry with reserved bits set: ${raw.toString(16)}`);
          res.corruptions += times;
        }
        const host = entryOffset(hi, lo);
        if (host === 0) {
          if (bitmap & 0xffffffffn) {
            res.messages.push('ERROR: Unallocated cluster has non-zero subcluster allocation map');
            res.corruptions += times;
          }
          continue;
        }
        if ((bitmap >> 32n) & bitmap) {
          res.messages.push(`ERROR offset=${host.toString(16)}: Allocated cluster has corrupted subcluster allocation bitmap`);
          res.corruptions += times;
        }
        if (host % cs !== 0) {
          // Still a reference, to both clusters it straddles (QEMU counts it so); only the entry is wrong.
          const data = extended ? (bitmap & 0xffffffffn) !== 0n : (lo & 1) === 0;
          res.messages.push(`ERROR offset=${host.toString(16)}: ${data ? 'Data' : 'Preallocated'} cluster is not properly aligned; L2 entry corrupted.`);
          res.corruptions += times;
        }
        if (!dataFile) ref(host, cs, times);
        if (active) {
          res.allocatedClusters += times;
          if (nextContiguous !== 0 && host !== nextContiguous) res.fragmentedClusters += times;
          nextContiguous = host + cs;
        }
      }
    }
  };
  ref(h.l1TableOffset, Math.max(h.l1Size * 8, 1));
  await walkL1(t.l1Entries(), true);
  for (const s of t.snapshotL1s()) {
    // A snapshot's L1 obeys the same caps as the active one; a hostile size is an error, not an allocation.
    if (s.size * 8 > MAX_L1_BYTES || s.offset % cs !== 0 || s.offset + s.size * 8 > t.file.size) {
      res.messages.push(`ERROR snapshot L1 table at 0x${s.offset.toString(16)} with ${s.size} entries is invalid`);
      res.corruptions++;
      continue;
    }
    ref(s.offset, Math.max(s.size * 8, 1));
    const raw = new Uint8Array(s.size * 8);
    if (raw.byteLength > 0) await t.file.read(s.offset, raw);
    const dv = new DataView(raw.buffer);
    await walkL1(Array.from({ length: s.size }, (_, i) => dv.getBigUint64(i * 8)), false);
  }
  const snapTable = t.snapshotTable();
  if (snapTable && snapTable.length > 0) ref(snapTable.offset, snapTable.length);
  ref(h.refcountTableOffset, h.refcountTableClusters * cs);
  // check_refblocks: each block inside the image, referenced once (by the refcount table) and by nothing else.
  for (const [i, block] of t.refcounts.table.entries()) {
    if (block === 0) continue;
    if (Math.floor(block / cs) >= fileClusters) {
      res.messages.push(`ERROR refcount block ${i} is outside image`);
      res.corruptions++;
      continue;
    }
    ref(block);
    const n = refs.get(block / cs) ?? 0;
    if (n !== 1) {
      res.messages.push(`ERROR refcount block ${i} refcount=${n}`);
      res.corruptions++;
    }
  }

  // Compare over the file's clusters: beyond the end there is nothing to leak or lose.
  let highest = -1;
  for (let c = 0; c < fileClusters; c++) {
    const stored = await t.refcounts.get(c);
    const wanted = refs.get(c) ?? 0;
    if (stored !== wanted) {
      const leak = stored > wanted;
      const fixing = fix === 'all' || (fix === 'leaks' && leak);
      res.messages.push(`${fixing ? 'Repairing' : leak ? 'Leaked' : 'ERROR'} cluster ${c} refcount=${stored} reference=${wanted}`);
      if (fixing) {
        await t.refcounts.setCount(c, wanted);
        if (leak) res.leaksFixed++;
        else res.corruptionsFixed++;
      } else if (leak) res.leaks++;
      else res.corruptions++;
    }
    if ((fix === 'all' || (fix === 'leaks' && stored > wanted) ? wanted : stored) > 0) highest = c;
  }
  res.imageEndOffset = (highest + 1) * cs;

  // COPIED must say "refcount is 1" in the active tables. Like QEMU, -r leaks repairs it too when
  // the refcounts are otherwise consistent (then they can be trusted).
  const repairCopied: CheckFix = fix === 'all' || (fix === 'leaks' && !res.checkErrors && !res.corruptions && !res.leaks) ? 'all' : 'none';
  // The stored refcount; undefined where it cannot be read (QEMU then skips the entry silently).
  const refcountOf = async (cluster: number) => t.refcounts.get(cluster).catch(() => undefined);
  for (const [index, e] of t.l1Entries().entries()) {
    const l2 = Number(e & 0x00fffffffffffe00n);
    if (l2 === 0) continue;
    const l2Count = await refcountOf(Math.floor(l2 / cs));
    const want = l2Count === 1;
    if (l2Count !== undefined && ((e & OFLAG_COPIED) !== 0n) !== want) {
      await copiedError(t, res, l2 % cs === 0 ? repairCopied : 'none', 'l1', h.l1TableOffset, index, want, `L2 cluster: l1_index=${index} l1_entry=${e.toString(16)} refcount=${l2Count}`);
    }
    if (dataFile) continue;
    const table = await readL2(l2);
    const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    for (let i = 0; i < cs / entrySize; i++) {
      const entry = dv.getBigUint64(i * entrySize);
      const host = Number(entry & L2E_OFFSET_MASK);
      if (entry & OFLAG_COMPRESSED || host === 0) continue;
      const count = await refcountOf(Math.floor(host / cs));
      if (count !== undefined && ((entry & OFLAG_COPIED) !== 0n) !== (count === 1)) {
        await copiedError(t, res, l2 % cs === 0 && l2 + cs <= t.file.size ? repairCopied : 'none', 'l2', l2, i, count === 1, `data cluster: l2_entry=${entry.toString(16)} refcount=${count}`);
      }
    }
  }
  await t.refcounts.writeBack();
  return res;
}

async function copiedError(t: CheckTarget, res: CheckResult, fix: CheckFix, kind: 'l1' | 'l2', table: number, index: number, copied: boolean, what: string): Promise<void> {
  if (fix === 'all') {
    res.messages.push(`Repairing OFLAG_COPIED ${what}`);
    await t.setCopied(kind, table, index, copied);
    res.corruptionsFixed++;
  } else {
    res.messages.push(`ERROR OFLAG_COPIED ${what}`);
    res.corruptions++;
  }
}
