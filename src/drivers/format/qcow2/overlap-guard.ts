import type { CorruptionSignal } from './corruption.js';
import type { Qcow2Header } from './header.js';
import type { Refcounts } from './refcounts.js';
import type { Qcow2Snapshot } from './snapshots.js';
import type { Qcow2Tables } from './tables.js';

/**
 * QEMU's overlap check for data writes (qcow2_check_metadata_overlap): a corrupt L2 entry may
 * point at metadata (the header, L1, L2 or refcount tables, snapshot tables), and writing guest
 * data there would destroy it. Such a write is refused and the image marked corrupt, as QEMU does.
 */
export class OverlapGuard {
  /**
   * Host clusters holding metadata, rebuilt when a table moves or appears; the snapshots' L1
   * tables as byte ranges, since a damaged snapshot entry may claim gigabytes of them.
   */
  private metadata: { clusters: Set<number>; inactiveL1s: [number, number][]; tables: number; refcounts: number } | undefined;

  constructor(private readonly parts: {
    header: Qcow2Header;
    clusterSize: number;
    /** Guest data goes to an external data file, where no metadata lives. */
    hasDataFile: boolean;
    tables: Qcow2Tables;
    refcounts: () => Promise<Refcounts>;
    /** The refcounts when already loaded (no promise on the data-write path). */
    currentRefcounts: () => Refcounts | undefined;
    snapshots: readonly Qcow2Snapshot[];
    snapshotTableLength: number;
    signal: CorruptionSignal;
  }) {}

  /** Forget the metadata map (the header moved a table without bumping a version). */
  invalidate(): void {
    this.metadata = undefined;
  }

  /**
   * Throws E_CORRUPT, after signalling the corruption (marking the image corrupt), when [host,
   * host + length) touches metadata. Undefined when the write may go ahead and that was known at
   * once (the usual case: refcounts loaded, map current), so a data write pays no promise for it.
   */
  check(host: number, length: number): Promise<void> | undefined {
    const p = this.parts;
    if (p.hasDataFile || length === 0) return undefined;
    const refcounts = p.currentRefcounts();
    if (!refcounts) return p.refcounts().then(() => this.check(host, length));
    const hit = this.overlap(refcounts, host, length);
    if (hit === undefined) return undefined;
    return p.signal.signal(`Preventing invalid write on metadata at host offset 0x${hit.toString(16)}`).then((err) => {
      throw err;
    });
  }

  /**
   * The host offset of the first metadata cluster [host, host + length) touches, or undefined;
   * only looks (the NBD data plane asks before it writes clusters in place; see in-place.ts).
   */
  overlap(refcounts: Refcounts, host: number, length: number): number | undefined {
    const p = this.parts;
    if (p.hasDataFile || length === 0) return undefined;
    const cs = p.clusterSize;
    if (!this.metadata || this.metadata.tables !== p.tables.version || this.metadata.refcounts !== refcounts.version) {
      const inactiveL1s = p.snapshots.filter((s) => s.l1Size > 0).map((s): [number, number] => [s.l1TableOffset, s.l1TableOffset + s.l1Size * 8]);
      this.metadata = { clusters: this.metadataClusters(refcounts), inactiveL1s, tables: p.tables.version, refcounts: refcounts.version };
    }
    const first = Math.floor(host / cs);
    const last = Math.floor((host + length - 1) / cs);
    let hit: number | undefined;
    for (let c = first; c <= last && hit === undefined; c++) if (this.metadata.clusters.has(c)) hit = c * cs;
    // Whole clusters, as for the rest: QEMU aligns the range of a metadata check to clusters.
    const range = this.metadata.inactiveL1s.find(([start, end]) => start < (last + 1) * cs && end > first * cs);
    return hit ?? (range && Math.max(first * cs, range[0] - (range[0] % cs)));
  }

  private metadataClusters(refcounts: Refcounts): Set<number> {
    const { tables, header, clusterSize: cs } = this.parts;
    const clusters = new Set<number>();
    const add = (offset: number, bytes: number) => {
      // A damaged entry may point past 2^53, where no write can land (and c++ would stand still).
      if (offset + bytes > Number.MAX_SAFE_INTEGER) return;
      for (let c = Math.floor(offset / cs); c <= Math.floor((offset + Math.max(bytes, 1) - 1) / cs); c++) clusters.add(c);
    };
    add(0, cs);
    add(tables.l1Offset, tables.l1.length * 8);
    for (const l2 of tables.l1) if (l2) add(l2, cs);
    const reftable = refcounts.tableRange;
    add(reftable.offset, reftable.clusters * cs);
    for (const block of refcounts.table) if (block) add(block, cs);
    if (header.nbSnapshots > 0) add(header.snapshotsOffset, this.parts.snapshotTableLength);
    return clusters;
  }
}
