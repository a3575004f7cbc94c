import type { BlockError } from '../../../core/errors.js';
import { entryView, type Qcow2Geometry } from './geometry.js';
import { compressedRange, decode, Sub, type CompressedRange, type Decoded, type EntryView } from './l2-entry.js';
import type { Qcow2Tables } from './tables.js';

/** A run of guest bytes that one kind of (sub)cluster covers, with contiguous host bytes. */
export interface Run {
  sub: Sub;
  length: number;
  /** Host byte offset of the run's first guest byte (Normal, ZeroAlloc, UnallocatedAlloc). */
  host: number;
  /** The cluster is ours alone (refcount 1): it may be written in place. */
  copied: boolean;
  /** For a compressed run: where its compressed bytes lie in the image file. */
  compressed?: CompressedRange;
}

/**
 * Guest → host mapping through the L1 and L2 tables (QEMU's qcow2_get_host_offset): the one
 * question reads, writes and block status all start from.
 */
export class Qcow2Mapping {
  constructor(
    private readonly g: Qcow2Geometry,
    private readonly tables: Qcow2Tables,
    /** The error for a damaged image, naming it. */
    private readonly corruption: (what: string) => BlockError,
  ) {}

  /**
   * The run of same-kind, host-contiguous (sub)clusters starting at `offset`, within one slice
   * of one L2 table.
   */
  mapRun(offset: number, maxLength: number): Promise<Run> | Run {
    const { clusterSize: cs, l2Entries } = this.g;
    const clusterIndex = Math.floor(offset / cs);
    const l1Index = Math.floor(clusterIndex / l2Entries);
    const l2Index = clusterIndex % l2Entries;
    const sliceEntries = this.tables.sliceEntries;
    const slice = Math.floor(l2Index / sliceEntries);
    const l2Offset = this.tables.l1[l1Index] ?? 0;
    if (l2Offset === 0) {
      const inCluster = offset - clusterIndex * cs;
      return { sub: Sub.UnallocatedPlain, length: Math.min(maxLength, (l2Entries - l2Index) * cs - inCluster), host: 0, copied: false };
    }
    // Tables open leniently so check can see a damaged image; I/O through a bad entry stops here.
    if (l2Offset % cs !== 0) throw this.corruption(`L1 entry ${l1Index} points at a misaligned L2 table (0x${l2Offset.toString(16)})`);
    const hit = this.tables.peekSlice(l2Offset, slice);
    if (hit) return this.runIn(hit, offset, maxLength, l2Index - slice * sliceEntries);
    return this.tables.useSlice(l2Offset, slice, (t) => this.runIn(t, offset, maxLength, l2Index - slice * sliceEntries));
  }

  /** The view of the slice used last: sequential requests stay in one slice for many clusters. */
  private lastView: EntryView | undefined;

  private viewOf(slice: Uint8Array): EntryView {
    const v = this.lastView;
    if (v && v.dv.buffer === slice.buffer && v.dv.byteOffset === slice.byteOffset && v.dv.byteLength === slice.byteLength) return v;
    return (this.lastView = entryView(this.g, slice));
  }

  /** The run at `offset`, whose L2 entry is entry `index` of `slice`. */
  private runIn(slice: Uint8Array, offset: number, maxLength: number, index: number): Run {
    const { clusterSize: cs, subclusterSize: ss } = this.g;
    const inCluster = offset % cs;
    const sliceEntries = this.tables.sliceEntries;
    const limit = Math.min(maxLength, (sliceEntries - index) * cs - inCluster);
    const view = this.viewOf(slice);
    const sc = Math.floor(inCluster / ss);
    const first = decode(view, index, sc);
    if (first.invalid) throw this.corruption(`${first.invalid} (guest offset ${offset})`);
    if (first.sub === Sub.Compressed) {
      return { sub: Sub.Compressed, length: Math.min(limit, cs - inCluster), host: 0, copied: false, compressed: compressedRange(view, index) };
    }
    const hosted = first.sub === Sub.Normal || first.sub === Sub.ZeroAlloc || first.sub === Sub.UnallocatedAlloc;
    const firstLength = (sc + 1) * ss - inCluster;
    const length = view.extendedL2
      ? subclusterRun(view, index, sc, first, hosted, cs / ss, firstLength, limit)
      : plainRun(view.dv, index, hosted, first.hostCluster, cs, firstLength, limit);
    return { sub: first.sub, length: Math.min(length, limit), host: hosted ? first.hostCluster + inCluster : 0, copied: first.copied };
  }
}

const TWO32 = 2 ** 32;

/**
 * runIn's walk for tables without subclusters, on the entries' raw words: entry k past the first
 * continues the run exactly when it equals the first with the host offset moved k clusters on
 * (or, unhosted, equals it outright). No entry object per cluster: a 1 MiB read spans 16 of them,
 * and decoding each was most of a cached read's JavaScript. Returns the run's length so far.
 */
function plainRun(dv: DataView, index: number, hosted: boolean, host: number, cs: number, length: number, limit: number): number {
  const hi0 = dv.getUint32(index * 8);
  const lo0 = dv.getUint32(index * 8 + 4);
  for (let k = 1; length < limit; k++) {
    const hi = dv.getUint32((index + k) * 8);
    const lo = dv.getUint32((index + k) * 8 + 4);
    if (hosted) {
      const next = host + k * cs;
      const upper = Math.floor(next / TWO32);
      if (hi !== ((hi0 & 0xff000000) | upper) >>> 0 || lo !== ((next - upper * TWO32) | (lo0 & 0x1ff)) >>> 0) break;
    } else if (hi !== hi0 || lo !== lo0) break;
    length += cs;
  }
  return length;
}

/**
 * runIn's walk for tables with subclusters: entry by entry and subcluster by subcluster from
 * subcluster `sc` of entry `index` (whose decoding is `first`), while each continues the run.
 */
function subclusterRun(view: EntryView, index: number, sc: number, first: Decoded, hosted: boolean, perCluster: number, length: number, limit: number): number {
  const ss = view.clusterSize / perCluster;
  for (let at = index; length < limit;) {
    if (sc + 1 < perCluster) sc++;
    else {
      at++;
      sc = 0;
    }
    const next = decode(view, at, sc);
    if (next.invalid || next.sub !== first.sub || next.copied !== first.copied) break;
    if (hosted && next.hostCluster !== first.hostCluster + (at - index) * view.clusterSize) break;
    length += ss;
  }
  return length;
}
