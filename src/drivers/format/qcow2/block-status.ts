import { BlockError } from '../../../core/errors.js';
import type { BlockNode } from '../../../core/block-node.js';
import type { Extent, IoOptions } from '../../../core/types.js';
import { Sub } from './l2-entry.js';
import type { Qcow2Mapping, Run } from './mapping.js';
import type { Refcounts } from './refcounts.js';

/** Extents one block-status call returns at most. */
const STATUS_BATCH = 1024;

/**
 * Block status as `qemu-img map` reports it: data (with its host offset) / zero / unallocated
 * (what the backing chain says, one level deeper) / compressed.
 */
export class Qcow2BlockStatus {
  /** Whether data extents must be checked against holes in the host file (see dataStatus). */
  private metadataPreallocation: Promise<boolean> | undefined;

  constructor(
    private readonly mapping: Qcow2Mapping,
    private readonly parts: {
      file: BlockNode;
      dataFile: BlockNode;
      backing: BlockNode | undefined;
      clusterSize: number;
      refcounts: () => Promise<Refcounts>;
    },
  ) {}

  async list(offset: number, maxLength: number, opts: IoOptions): Promise<Extent[]> {
    const out: Extent[] = [];
    const end = offset + maxLength;
    const hostFile = this.parts.dataFile.filename;
    for (let pos = offset; pos < end && out.length < STATUS_BATCH;) {
      const run = await this.mapping.mapRun(pos, end - pos);
      switch (run.sub) {
        case Sub.UnallocatedPlain:
        case Sub.UnallocatedAlloc:
          pos = await this.backingStatus(pos, run, out, opts);
          continue;
        case Sub.Normal:
          await this.dataStatus(pos, run, out, opts);
          break;
        case Sub.ZeroPlain:
          out.push({ offset: pos, length: run.length, data: false, zero: true, present: true, depth: 0 });
          break;
        case Sub.ZeroAlloc:
          out.push({ offset: pos, length: run.length, data: false, zero: true, present: true, depth: 0, hostOffset: run.host, hostFile });
          break;
        case Sub.Compressed:
          out.push({ offset: pos, length: run.length, data: true, zero: false, present: true, depth: 0, compressed: true });
          break;
      }
      pos += run.length;
    }
    return out;
  }

  /**
   * Unallocated here: what the backing chain says, one level deeper. Without a backing file, or
   * past its end, zeros at depth 0 (QEMU's answer); an unallocated subcluster of an allocated
   * cluster still names its host offset there.
   */
  private async backingStatus(pos: number, run: Run, out: Extent[], opts: IoOptions): Promise<number> {
    const backing = this.parts.backing;
    if (backing && pos < backing.size) {
      const list = await backing.blockStatusList(pos, Math.min(run.length, backing.size - pos), opts);
      for (const e of list) out.push(deeper(e));
      const last = list[list.length - 1]!;
      return last.offset + last.length;
    }
    const e: Extent = { offset: pos, length: run.length, data: false, zero: true, present: false, depth: 0 };
    if (run.sub === Sub.UnallocatedAlloc) [e.hostOffset, e.hostFile] = [run.host, this.parts.dataFile.filename];
    out.push(e);
    return pos + run.length;
  }

  /**
   * A data run. On images with preallocated metadata the host range may still be a hole, which
   * QEMU reports as zero (data and zero); it looks only on such images, and so do we.
   */
  private async dataStatus(pos: number, run: Run, out: Extent[], opts: IoOptions): Promise<void> {
    const dataFile = this.parts.dataFile;
    const hostFile = dataFile.filename;
    if (!(await this.hasMetadataPreallocation())) {
      out.push({ offset: pos, length: run.length, data: true, zero: false, present: true, depth: 0, hostOffset: run.host, hostFile });
      return;
    }
    for (let done = 0; done < run.length;) {
      const host = run.host + done;
      if (host >= dataFile.size) {
        out.push({ offset: pos + done, length: run.length - done, data: true, zero: true, present: true, depth: 0, hostOffset: host, hostFile });
        return;
      }
      const e = await dataFile.blockStatus(host, Math.min(run.length - done, dataFile.size - host), opts);
      out.push({ offset: pos + done, length: e.length, data: true, zero: e.zero, present: true, depth: 0, hostOffset: host, hostFile });
      done += e.length;
    }
  }

  /**
   * QEMU's test (qcow2_detect_metadata_preallocation): far more clusters are refcounted than
   * the file has allocated, so allocated clusters may sit on holes.
   */
  private hasMetadataPreallocation(): Promise<boolean> {
    return (this.metadataPreallocation ??= (async () => {
      const { file, clusterSize } = this.parts;
      const allocated = await file.allocatedSize();
      if (allocated === undefined) return false;
      const refcounts = await this.parts.refcounts();
      const clusters = Math.ceil(file.size / clusterSize);
      let used = 0;
      try {
        for (let i = 0; i < clusters; i++) if ((await refcounts.get(i)) > 0) used++;
      } catch (err) {
        // A refcount block that cannot be read (signalled as corruption): QEMU assumes no
        // preallocation then, and block status goes on.
        if (err instanceof BlockError) return false;
        throw err;
      }
      const real = Math.floor(allocated / clusterSize);
      return used >= Math.max(Math.floor((real * 10) / 9), real + 2);
    })());
  }
}

/** An extent of the backing chain as seen from one level up (a literal: this runs per extent). */
function deeper(e: Extent): Extent {
  const out: Extent = { offset: e.offset, length: e.length, data: e.data, zero: e.zero, present: e.present, depth: e.depth + 1 };
  if (e.compressed !== undefined) out.compressed = e.compressed;
  if (e.hostOffset !== undefined) out.hostOffset = e.hostOffset;
  if (e.hostFile !== undefined) out.hostFile = e.hostFile;
  return out;
}
