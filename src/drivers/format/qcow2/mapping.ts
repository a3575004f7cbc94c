import type { BlockError } from '../../../core/errors.js';
import { entryView, type Qcow2Geometry } from './geometry.js';
import { decode, Sub, type EntryView } from './l2-entry.js';
import type { Qcow2Tables } from './tables.js';

/** A run of guest bytes that one kind of (sub)cluster covers, with contiguous host bytes. */
export interface Run {
  sub: Sub;
  length: number;
  /** Host byte offset of the run's first guest byte (Normal, ZeroAlloc, UnallocatedAlloc). */
  host: number;
  /** The cluster is ours alone (refcount 1): it may be written in place. */
  copied: boolean;
  /** For a compressed run: the L2 table and entry index. */
  view?: EntryView;
  index?: number;
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

  /** The run of same-kind, host-contiguous (sub)clusters starting at `offset`, within one L2 table. */
  async mapRun(offset: number, maxLength: number): Promise<Run> {
    const { clusterSize: cs, l2Entries, subclusterSize: ss } = this.g;
    const clusterIndex = Math.floor(offset / cs);
    const inCluster = offset - clusterIndex * cs;
    const l1Index = Math.floor(clusterIndex / l2Entries);
    const l2Index = clusterIndex % l2Entries;
    const limit = Math.min(maxLength, (l2Entries - l2Index) * cs - inCluster);
    const l2Offset = this.tables.l1[l1Index] ?? 0;
    if (l2Offset === 0) return { sub: Sub.UnallocatedPlain, length: limit, host: 0, copied: false };
    // Tables open leniently so check can see a damaged image; I/O through a bad entry stops here.
    if (l2Offset % cs !== 0) throw this.corruption(`L1 entry ${l1Index} points at a misaligned L2 table (0x${l2Offset.toString(16)})`);
    const view = entryView(this.g, await this.tables.get(l2Offset));
    let sc = Math.floor(inCluster / ss);
    const first = decode(view, l2Index, sc);
    if (first.invalid) throw this.corruption(`${first.invalid} (guest offset ${offset})`);
    if (first.sub === Sub.Compressed) {
      return { sub: Sub.Compressed, length: Math.min(limit, cs - inCluster), host: 0, copied: false, view, index: l2Index };
    }
    const hosted = first.sub === Sub.Normal || first.sub === Sub.ZeroAlloc || first.sub === Sub.UnallocatedAlloc;
    let length = (sc + 1) * ss - inCluster;
    let index = l2Index;
    while (length < limit) {
      if (sc + 1 < cs / ss) sc++;
      else {
        index++;
        sc = 0;
      }
      const next = decode(view, index, sc);
      if (next.invalid || next.sub !== first.sub || next.copied !== first.copied) break;
      if (hosted && next.hostCluster !== first.hostCluster + (index - l2Index) * cs) break;
      length += ss;
    }
    return { sub: first.sub, length: Math.min(length, limit), host: hosted ? first.hostCluster + inCluster : 0, copied: first.copied };
  }
}
