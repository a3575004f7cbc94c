import { OFLAG_COPIED } from './constants.js';
import type { Qcow2Geometry } from './geometry.js';
import type { L2Editor } from './l2-editor.js';
import { decode } from './l2-entry.js';
import type { MetadataLock } from './metadata-lock.js';
import type { MetadataWriteback } from './metadata-writeback.js';
import type { RefcountLoader } from './refcounts.js';

/** A new host cluster being zeroed for a guest cluster, outside the metadata lock. */
export interface Zeroing {
  host: number;
  /**
   * True once the cluster reads zeros: from then on it is the guest cluster's, and writes go
   * into it in place although its L2 entry may not point at it yet (that update is queued on
   * the lock before this resolves, so it comes before any flush a later request asks for).
   * False when the storage refused (the cluster is given back and the entry never changed; a
   * write retries the ordinary way). Rejects with the zeroing's error.
   */
  done: Promise<boolean>;
  /** The L2 update: the writer that allocated the cluster waits for it, others need not. */
  linked: Promise<void>;
}

/**
 * New clusters whose untouched parts are being zeroed (QEMU's handle_alloc_space) while the
 * metadata lock is free for other allocations; by guest cluster index. The lock holder that
 * allocated the cluster starts the zeroing and leaves; once it is done, the L2 entry is pointed
 * at the cluster under the lock, and meanwhile other writes into the guest cluster wait for the
 * zeroing only, as QEMU's unmerged "concurrent writes to allocated clusters" would have them.
 *
 * Crash order: the zeroing is marked as data written (flushed before any table) in the same
 * lock section that points the entry at it; the guest bytes that follow may land before or
 * after the entry reaches the disk, and either way the cluster reads as before or as after.
 */
export class ZeroingClusters {
  private readonly pending = new Map<number, Zeroing>();

  constructor(private readonly parts: {
    g: Qcow2Geometry;
    editor: L2Editor;
    lock: MetadataLock;
    writeback: MetadataWriteback;
    refcounts: RefcountLoader;
    /** Zeroes the host cluster cheaply; false when the storage cannot. */
    zero: (host: number) => Promise<boolean>;
  }) {}

  get(clusterIndex: number): Zeroing | undefined {
    return this.pending.get(clusterIndex);
  }

  /** Called under the lock, with `host` newly allocated for the guest cluster at `guestBase`. */
  start(guestBase: number, host: number): Zeroing {
    const { g, lock } = this.parts;
    const index = Math.floor(guestBase / g.clusterSize);
    let linked!: Promise<void>;
    const zeroing = this.parts.zero(host).then(
      (ok) => {
        linked = lock.run(() => (ok ? this.link(index, guestBase, host) : this.giveBack(index, host)));
        // Refused: retries must not find this entry, so they wait for it to be gone.
        return ok ? true : linked.then(() => false);
      },
      async (err: unknown) => {
        linked = lock.run(() => this.giveBack(index, host));
        await linked;
        throw err;
      },
    );
    const z: Zeroing = { host, done: zeroing, linked: zeroing.then(() => linked, () => linked) };
    this.pending.set(index, z);
    return z;
  }

  private async link(index: number, guestBase: number, host: number): Promise<void> {
    const { g, editor, writeback } = this.parts;
    try {
      writeback.dataChanged();
      const { entry, view } = await editor.entryForWrite(guestBase);
      // Whatever the entry says now (a zero write may have come between) gives way to the cluster.
      editor.freeOld(decode(view, entry, 0), view, entry);
      view.dv.setBigUint64(entry * g.entryBytes, BigInt(host) | OFLAG_COPIED);
    } finally {
      this.pending.delete(index);
    }
    await writeback.relieveCachePressure();
  }

  private async giveBack(index: number, host: number): Promise<void> {
    this.pending.delete(index);
    if (!this.parts.g.hasDataFile) (await this.parts.refcounts.get()).free(host, 1);
  }
}
