import type { CheckContext } from './check-context.js';
import type { Metadata, RepairGuard } from './check-overlap.js';
import type { Refcounts } from './refcounts.js';

/**
 * Refcounts a repair set but QEMU would not have written: their refcount block is also other
 * metadata. QEMU keeps such a value in its refcount cache, where the double check after the
 * repair reads it, and fails only when the cache is flushed; so later checks of the same open
 * image see them here too. Keyed by the image's refcount reader, they go with the image.
 */
const unwritten = new WeakMap<Refcounts, Map<number, number>>();

/**
 * The refcounts on disk as the check reads and repairs them (QEMU's qcow2_get_refcount and
 * update_refcount), through the image's own reader so that the image sees every repair.
 */
export class StoredRefcounts {
  private refused: Metadata | undefined;
  /** Clusters whose refcount the repair set to 0: their bytes are discarded, as QEMU does. */
  private readonly freed: number[] = [];

  constructor(private readonly ctx: CheckContext, private readonly guard: RepairGuard) {}

  private get reader(): Refcounts {
    return this.ctx.t.refcounts;
  }

  /**
   * The first cluster at or after `cluster` whose refcount block exists (table entry set, inside
   * the file); `end` when none does before it. Every refcount in between reads 0, so a check of
   * a file grown huge and sparse walks only the clusters something references there.
   */
  nextStored(cluster: number, end: number): number {
    const per = this.reader.perBlock;
    const size = this.ctx.t.file.size;
    for (let c = cluster; c < end; c = (Math.floor(c / per) + 1) * per) {
      const block = this.blockOf(c);
      if (block !== 0 && block < size) return c;
    }
    return end;
  }

  async get(cluster: number): Promise<number> {
    const held = unwritten.get(this.reader)?.get(cluster);
    if (held !== undefined) return held;
    const block = this.blockOf(cluster);
    // QEMU reads a refcount block past the end of the file as zeros.
    if (block === 0 || block >= this.ctx.t.file.size) return 0;
    return this.reader.get(cluster);
  }

  /**
   * Sets a cluster's refcount; the caller has read a non-zero one, so its refcount block exists.
   * A block that doubles as other metadata is not written (the repair counts, as in QEMU, but the
   * image is marked corrupt when the check ends).
   */
  async set(cluster: number, value: number): Promise<void> {
    const block = this.blockOf(cluster);
    const clash = this.guard.overlap(block, this.ctx.cs, 'refcount block');
    if (clash !== undefined) {
      this.refused ??= clash;
      let held = unwritten.get(this.reader);
      if (!held) unwritten.set(this.reader, (held = new Map()));
      held.set(cluster, value);
    } else {
      await this.reader.setCount(cluster, value);
    }
    // Nothing references it (QEMU discards it even when its refcount block cannot be written).
    if (value === 0) this.freed.push(cluster);
  }

  /**
   * Writes the repaired refcount blocks, or marks the image corrupt for one QEMU would refuse;
   * then discards the clusters that became free (whole ones inside the file), so a leaked
   * cluster's old data does not linger (QEMU's QCOW2_DISCARD_ALWAYS for repairs).
   */
  async flush(): Promise<void> {
    const { t: { file }, cs } = this.ctx;
    if (await this.reader.writeBack()) await file.flush();
    if (this.refused !== undefined) await this.guard.refuse(this.refused);
    // One discard per run of adjacent clusters, as QEMU merges its queued discards: a damaged
    // image can leak thousands of clusters.
    const freed = this.freed.splice(0).filter((c) => (c + 1) * cs <= file.size).sort((a, b) => a - b);
    for (let i = 0; i < freed.length;) {
      let end = i + 1;
      while (end < freed.length && freed[end]! <= freed[end - 1]! + 1) end++;
      await file.discard(freed[i]! * cs, (freed[end - 1]! + 1 - freed[i]!) * cs);
      i = end;
    }
  }

  /** The refcount structures were rebuilt from the references alone: nothing is held back any more. */
  rebuilt(): void {
    unwritten.delete(this.reader);
  }

  private blockOf(cluster: number): number {
    return this.reader.table[Math.floor(cluster / this.reader.perBlock)] ?? 0;
  }
}
