import { entryView, type Qcow2Geometry } from './geometry.js';
import type { LazyRefcounts } from './lazy-refcounts.js';
import { compressedRange, Sub, type Decoded, type EntryView } from './l2-entry.js';
import type { RefcountLoader } from './refcounts.js';
import type { Qcow2Tables } from './tables.js';

/** One L2 entry made writable: its index in its slice, and a view of the slice to change it. */
export interface WritableEntry {
  entry: number;
  view: EntryView;
}

/**
 * Changes L2 entries for writers (data, zeroes, discard, shrink): finds an entry's table and makes
 * it ours (allocating it, or copying one shared with a snapshot) and dirty, and drops the
 * references an entry gave up.
 */
export class L2Editor {
  constructor(
    private readonly g: Qcow2Geometry,
    private readonly tables: Qcow2Tables,
    private readonly refcounts: RefcountLoader,
    private readonly lazy: LazyRefcounts,
  ) {}

  /**
   * The L2 entry of the guest cluster at `guest`, in a slice made writable and marked dirty: it
   * stays at this buffer until the next writeback, so the caller may change it across awaits.
   */
  async entryForWrite(guest: number): Promise<WritableEntry> {
    await this.lazy.beforeMetadataChange();
    const clusterIndex = Math.floor(guest / this.g.clusterSize);
    const l2Index = clusterIndex % this.g.l2Entries;
    const sliceEntries = this.tables.sliceEntries;
    const table = await this.tables.forWrite(Math.floor(clusterIndex / this.g.l2Entries), Math.floor(l2Index / sliceEntries), await this.refcounts.get());
    return { entry: l2Index % sliceEntries, view: entryView(this.g, table) };
  }

  /** Drops this image's reference to the host cluster(s) an entry held (at the next flush). */
  freeOld(old: Decoded, view: EntryView, entry: number): void {
    if (this.g.hasDataFile) return;
    const cs = this.g.clusterSize;
    // entryForWrite loaded the refcounts before any entry could be changed.
    const refcounts = this.refcounts.current!;
    if (old.sub === Sub.Compressed) {
      const r = compressedRange(view, entry);
      const first = Math.floor(r.sectorsStart / cs);
      const last = Math.floor((r.sectorsStart + r.sectorsLength - 1) / cs);
      refcounts.free(first * cs, last - first + 1);
    } else if (old.hostCluster !== 0) {
      refcounts.free(old.hostCluster, 1);
    }
  }

}
