import { isNotSupported } from '../../../core/errors.js';
import { INCOMPAT } from './constants.js';
import { writeFeatureField } from './header-update.js';
import type { Qcow2Internals } from './qcow2-node.js';
import { writeEntry } from './refcounts.js';

/**
 * The layout of an emptied image: the header cluster, the refcount table (one cluster), its one
 * refcount block, then the L1 table, all zeros but for the counts of these clusters themselves.
 */
function emptyLayout(p: Qcow2Internals): { l1Clusters: number; clusters: number } {
  const cs = p.g.clusterSize;
  const l1Clusters = Math.ceil((p.header.l1Size * 8) / cs);
  return { l1Clusters, clusters: 3 + l1Clusters };
}

/**
 * Whether the image can be emptied by rebuilding it (QEMU's conditions for make_completely_empty):
 * a v3 image (it needs the dirty bit) holding nothing but the active state's tables and data — no
 * snapshots, no persistent bitmaps, no encryption header, no external data file (whose data the
 * rebuild would not reach) — and whose new layout is counted by a single refcount block.
 */
export function canRebuildEmpty(p: Qcow2Internals): boolean {
  const h = p.header;
  const perBlock = (p.g.clusterSize * 8) / 2 ** h.refcountOrder;
  return h.version === 3 && p.snapshots.length === 0 && !h.hasBitmapsExtension && h.cryptMethod === 0 && !p.g.hasDataFile
    && emptyLayout(p).clusters <= perBlock;
}

/**
 * Empties the image by rebuilding its metadata from nothing, as QEMU's make_completely_empty
 * does: instead of freeing every cluster (a refcount update and a hole punched per run), the
 * tables start over at the front of the file and the file is cut short after them, which gives
 * all of its space back at once.
 *
 * Crash safety rests on the dirty bit, set (and flushed) first: while it is set, the refcounts
 * are not trusted and the next writable open (or qemu-img check -r all) rebuilds them from the
 * tables. The tables themselves stay readable throughout: the old L1 table is zeroed in place
 * first, so nothing points at the clusters about to be overwritten; the new area is zeroed
 * before the header points at it; only then does anything but zeros go there. A crash may leak
 * the old clusters (the repair frees them) but never shows anything the image did not hold,
 * and from the first step on it reads through to its backing file. Each step is flushed before
 * the next, as QEMU's synchronous writes are.
 */
export async function rebuildEmpty(p: Qcow2Internals): Promise<void> {
  const { header: h, file, tables } = p;
  const cs = p.g.clusterSize;
  const { l1Clusters, clusters } = emptyLayout(p);
  // Everything still in memory goes out first: the reset below forgets it.
  await p.writeback.flush();

  await writeFeatureField(file, 'incompatible', h.incompatibleFeatures | INCOMPAT.DIRTY);
  h.incompatibleFeatures |= INCOMPAT.DIRTY;

  if (h.l1Size > 0) {
    await file.write(tables.l1Offset, new Uint8Array(h.l1Size * 8));
    await file.flush();
  }
  await file.writeZeroes(cs, (2 + l1Clusters) * cs);
  await file.flush();

  // The L1 table, the refcount table and its size in one write inside the first sector, which
  // lands whole or not at all.
  const fields = new Uint8Array(20);
  const dv = new DataView(fields.buffer);
  dv.setBigUint64(0, BigInt(3 * cs));
  dv.setBigUint64(8, BigInt(cs));
  dv.setUint32(16, 1);
  await file.write(40, fields);
  await file.flush();
  Object.assign(h, { l1TableOffset: 3 * cs, refcountTableOffset: cs, refcountTableClusters: 1 });
  tables.reset(3 * cs);

  // The refcount block before the table entry that points at it.
  const block = new Uint8Array(cs);
  for (let i = 0; i < clusters; i++) writeEntry(block, i, 2 ** h.refcountOrder, 1);
  await file.write(2 * cs, block);
  await file.flush();
  const entry = new Uint8Array(8);
  new DataView(entry.buffer).setBigUint64(0, BigInt(2 * cs));
  await file.write(cs, entry);
  await file.flush();
  await p.refcounts.reload();

  // Consistent again: the image is clean, as QEMU leaves it (lazy refcounts set the bit anew
  // at their next change).
  await writeFeatureField(file, 'incompatible', h.incompatibleFeatures & ~INCOMPAT.DIRTY);
  h.incompatibleFeatures &= ~INCOMPAT.DIRTY;
  try {
    await file.resize(clusters * cs);
  } catch (err) {
    // A block device keeps its size; its space was never the file system's to give back.
    if (!isNotSupported(err)) throw err;
  }
}
