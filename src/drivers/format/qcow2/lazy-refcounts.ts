import type { BlockNode } from '../../../core/block-node.js';
import { INCOMPAT } from './constants.js';
import type { Qcow2Header } from './header.js';
import { writeFeatureField } from './header-update.js';

/**
 * Lazy refcounts (compat 1.1, QEMU's lazy_refcounts=on): refcount updates may reach the disk
 * after the L2 tables that need them, saving the write and flush that would have to come first.
 * That is safe only while the header's dirty bit says so: it is set (and flushed) before the
 * first metadata change, and a crash leaves it set, so the next writable open rebuilds the
 * refcounts from the tables (repairDirty in index.ts; qemu-img check -r all does the same).
 * A clean close writes everything and clears it. As in QEMU, a flush writes the refcounts too
 * but leaves the bit set: the next change would only set it again.
 */
export class LazyRefcounts {
  /** This open set the dirty bit (an image left dirty by a crash is repaired, not cleared, here). */
  private markedHere = false;

  constructor(
    private readonly file: BlockNode,
    private readonly header: Qcow2Header,
    /** lazy-refcounts, as the option or else the header's compatible bit asks (amend changes it). */
    public enabled: boolean,
  ) {}

  /**
   * Whether refcounts must be on disk before the tables that reference their clusters
   * (QEMU's qcow2_need_accurate_refcounts): yes unless the image is marked dirty.
   */
  get accurate(): boolean {
    return (this.header.incompatibleFeatures & INCOMPAT.DIRTY) === 0n;
  }

  /** Called before any metadata change: sets the dirty bit on disk the first time (qcow2_mark_dirty). */
  async beforeMetadataChange(): Promise<void> {
    if (!this.enabled || !this.accurate) return;
    const h = this.header;
    await writeFeatureField(this.file, 'incompatible', h.incompatibleFeatures | INCOMPAT.DIRTY);
    h.incompatibleFeatures |= INCOMPAT.DIRTY;
    this.markedHere = true;
  }

  /** Called once everything is written (a clean close): clears the dirty bit (qcow2_mark_clean). */
  async afterCleanFlush(): Promise<void> {
    if (!this.markedHere || this.accurate) return;
    const h = this.header;
    await writeFeatureField(this.file, 'incompatible', h.incompatibleFeatures & ~INCOMPAT.DIRTY);
    h.incompatibleFeatures &= ~INCOMPAT.DIRTY;
    this.markedHere = false;
  }
}
