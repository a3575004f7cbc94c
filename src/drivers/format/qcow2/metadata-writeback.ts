import type { BlockNode } from '../../../core/block-node.js';
import type { LazyRefcounts } from './lazy-refcounts.js';
import type { RefcountLoader } from './refcounts.js';
import type { Qcow2Tables } from './tables.js';

/**
 * Puts changed metadata on disk in the order that keeps every crash harmless (QEMU's cache
 * dependencies): guest data, then refcount increments, then L2 tables, then L1; only then the
 * frees, whose clusters can be reused and punched once nothing on disk points at them.
 * With lazy refcounts on a dirty image the increments go last instead, without a flush of
 * their own before the tables. Callers hold the metadata lock.
 */
export class MetadataWriteback {
  /** Guest data written since the last flush (it must be stable before tables point at it). */
  private dataWritten = false;
  /** In-place data writes in flight: a flush lets them land before freed clusters can be reused. */
  private readonly inPlaceWrites = new Set<Promise<void>>();

  constructor(private readonly parts: {
    file: BlockNode;
    dataFile: BlockNode;
    tables: Qcow2Tables;
    refcounts: RefcountLoader;
    lazy: LazyRefcounts;
    clusterSize: number;
    /** Dirty L2 tables are pinned in memory; past this many bytes they go to disk. */
    l2CacheBytes: number;
  }) {}

  /** Guest data went to the data file: flush it before any table that points at it. */
  dataChanged(): void {
    this.dataWritten = true;
  }

  /**
   * Tracks an in-place data write that holds no lock, so a flush can wait for it; once it has
   * landed, the data file needs flushing before any table that points at it.
   */
  inPlace(write: Promise<void>): Promise<void> {
    this.inPlaceWrites.add(write);
    return write.then(
      () => {
        this.inPlaceWrites.delete(write);
        this.dataWritten = true;
      },
      (err: unknown) => {
        this.inPlaceWrites.delete(write);
        throw err;
      },
    );
  }

  async flush(): Promise<void> {
    const { file, dataFile, tables, clusterSize } = this.parts;
    if (this.dataWritten) {
      await dataFile.flush();
      this.dataWritten = false;
    }
    const refcounts = this.parts.refcounts.current;
    const accurate = this.parts.lazy.accurate;
    if (accurate && refcounts && (await refcounts.writeBack())) await file.flush();
    if (await tables.writeL2s()) await file.flush();
    if (await tables.writeL1()) await file.flush();
    if (!accurate && refcounts) await refcounts.writeBack();
    if (refcounts?.hasPendingFrees) {
      // An in-place write that mapped a cluster before it was freed must land before the cluster
      // can be handed out again.
      await Promise.allSettled([...this.inPlaceWrites]);
      const freed = await refcounts.applyFrees();
      await file.flush();
      // One discard per run of neighbouring clusters: emptying a whole image frees thousands.
      freed.sort((a, b) => a - b);
      for (let i = 0; i < freed.length;) {
        let j = i + 1;
        while (j < freed.length && freed[j] === freed[j - 1]! + 1) j++;
        const end = Math.min((freed[j - 1]! + 1) * clusterSize, file.size - (file.size % clusterSize));
        if (end > freed[i]! * clusterSize) await file.discard(freed[i]! * clusterSize, end - freed[i]! * clusterSize);
        i = j;
      }
    }
    await file.flush();
  }

  /** Flushes when the dirty tables outgrow the cache's size. */
  async relieveCachePressure(): Promise<void> {
    if (this.parts.tables.dirtyBytes > this.parts.l2CacheBytes) await this.flush();
  }
}
