import { INCOMPAT } from './constants.js';
import type { Qcow2Header } from './header.js';
import type { EntryView } from './l2-entry.js';

/** The fixed shape of an open image's mapping: sizes every part of the driver computes with. */
export interface Qcow2Geometry {
  readonly clusterBits: number;
  readonly clusterSize: number;
  /** Extended L2 entries (spec §6): 32 subclusters per cluster, 16 bytes per entry. */
  readonly extendedL2: boolean;
  /** Bytes per L2 entry. */
  readonly entryBytes: number;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  /** The unit of allocation within a cluster: a subcluster with extended L2, else the cluster. */
  readonly subclusterSize: number;
  /** Guest data lives in an external data file, at the guest offset; no refcounts cover it. */
  readonly hasDataFile: boolean;
}

export function geometryOf(h: Qcow2Header, hasDataFile: boolean): Qcow2Geometry {
  const clusterSize = 2 ** h.clusterBits;
  const extendedL2 = (h.incompatibleFeatures & INCOMPAT.EXTL2) !== 0n;
  const entryBytes = extendedL2 ? 16 : 8;
  return {
    clusterBits: h.clusterBits,
    clusterSize,
    extendedL2,
    entryBytes,
    l2Entries: clusterSize / entryBytes,
    subclusterSize: extendedL2 ? clusterSize / 32 : clusterSize,
    hasDataFile,
  };
}

/** How l2-entry.ts reads entries of `table` for this image. */
export function entryView(g: Qcow2Geometry, table: Uint8Array): EntryView {
  return {
    dv: new DataView(table.buffer, table.byteOffset, table.byteLength),
    extendedL2: g.extendedL2,
    hasDataFile: g.hasDataFile,
    clusterBits: g.clusterBits,
    clusterSize: g.clusterSize,
  };
}
