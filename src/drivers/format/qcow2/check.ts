import type { BlockNode } from '../../../core/block-node.js';
import { INCOMPAT, L2E_OFFSET_MASK, MAX_L1_BYTES, OFLAG_COMPRESSED, OFLAG_COPIED } from './constants.js';
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
  const ref = (offset: number, length = cs) => {
    for (let c = Math.floor(offset / cs); c <= Math.floor((offset + length - 1) / cs); c++) refs.set(c, (refs.get(c) ?? 0) + 1);
  };
  const extended = (h.incompatibleFeatures & INCOMPAT.EXTL2) !== 0n;
  const dataFile = (h.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n;
  const entrySize = extended ? 16 : 8;
  const fileClusters = Math.ceil(t.file.size / cs);

  ref(0);
  /** Walks one L1 table and everything below it; `active` also gathers statistics. */
  const walkL1 = async (entries: bigint[], active: boolean) => {
    let nextContiguous = 0;
    for (const e of entries) {
      const l2 = Number(e & 0x00fffffffffffe00n);
      if (l2 === 0) continue;
      if (l2 % cs !== 0) {
        res.messages.push(`ERROR l2_offset=${l2.toString(16)}: Table is not cluster aligned; L1 entry corrupted`);
        res.corruptions++;
        continue;
      }
      ref(l2);
      if (l2 + cs > t.file.size) {
        res.messages.push(`ERROR l2_offset=${l2.toString(16)}: L2 table is outside the image file`);
        res.corruptions++;
        continue;
      }
      const table = await t.readTable(l2);
      const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
      const view: EntryView = { dv, extendedL2: extended, hasDataFile: dataFile, clusterBits: h.clusterBits };
      for (let i = 0; i < cs / entrySize; i++) {
        const hi = dv.getUint32(i * entrySize);
        const lo = dv.getUint32(i * entrySize + 4);
        if (hi & 0x40000000) {
          const r = compressedRange(view, i);
          ref(r.sectorsStart, r.sectorsLength);
          if (active) {
            res.allocatedClusters++;
            res.compressedClusters++;
            res.fragmentedClusters++;
          }
          continue;
        }
        const host = entryOffset(hi, lo);
        if (host === 0) continue;
        if (host % cs !== 0) {
          res.messages.push(`ERROR offset=${host.toString(16)}: Cluster is not properly aligned; L2 entry corrupted.`);
          res.corruptions++;
          continue;
        }
        if (!dataFile) ref(host);
        if (active) {
          res.allocatedClusters++;
          if (nextContiguous !== 0 && host !== nextContiguous) res.fragmentedClusters++;
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
  for (const block of t.refcounts.table) if (block !== 0) ref(block);

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

  // COPIED must say "refcount is 1" in the active tables.
  for (const [index, e] of t.l1Entries().entries()) {
    const l2 = Number(e & 0x00fffffffffffe00n);
    if (l2 === 0 || l2 % cs !== 0) continue;
    const want = (await t.refcounts.get(l2 / cs)) === 1;
    if (((e & OFLAG_COPIED) !== 0n) !== want) {
      await copiedError(t, res, fix, 'l1', h.l1TableOffset, index, want, `L2 cluster: l1_index=${index} l1_entry=${e.toString(16)} refcount=${await t.refcounts.get(l2 / cs)}`);
    }
    if (dataFile || l2 + cs > t.file.size) continue;
    const table = await t.readTable(l2);
    const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    for (let i = 0; i < cs / entrySize; i++) {
      const entry = dv.getBigUint64(i * entrySize);
      const host = Number(entry & L2E_OFFSET_MASK);
      if (entry & OFLAG_COMPRESSED || host === 0 || host % cs !== 0) continue;
      const count = await t.refcounts.get(host / cs);
      if (((entry & OFLAG_COPIED) !== 0n) !== (count === 1)) {
        await copiedError(t, res, fix, 'l2', l2, i, count === 1, `data cluster: l2_entry=${entry.toString(16)} refcount=${count}`);
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
