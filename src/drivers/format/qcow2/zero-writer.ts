import type { BlockNode } from '../../../core/block-node.js';
import { NotSupportedError } from '../../../core/errors.js';
import type { ZeroOptions } from '../../../core/types.js';
import { AUTOCLEAR, OFLAG_COPIED, OFLAG_ZERO } from './constants.js';
import type { Qcow2Geometry } from './geometry.js';
import type { Qcow2Header } from './header.js';
import type { L2Editor } from './l2-editor.js';
import { decode, Sub } from './l2-entry.js';
import type { Qcow2Mapping } from './mapping.js';
import type { MetadataLock } from './metadata-lock.js';
import type { MetadataWriteback } from './metadata-writeback.js';

type ErrorContext = (op: string, offset?: number, length?: number) => Record<string, unknown> & { node: string; op: string };

/**
 * Zero writes and discards: metadata-only changes to L2 entries (the zero flag, subcluster zero
 * bits, or no entry at all), never guest data.
 */
export class ZeroWriter {
  constructor(private readonly parts: {
    g: Qcow2Geometry;
    header: Qcow2Header;
    dataFile: BlockNode;
    /** Unallocated clusters read from a backing file (not zeros). */
    hasBacking: boolean;
    mapping: Qcow2Mapping;
    editor: L2Editor;
    lock: MetadataLock;
    writeback: MetadataWriteback;
    /** The virtual disk's size now (resize changes it). */
    size: () => number;
    ctx: ErrorContext;
  }) {}

  /**
   * Zeroes whole clusters (subclusters with extended L2) through the zero flag or bitmap; a part
   * of a cluster that does not already read as zeros is refused, and the generic layer writes
   * zero data instead. v2 images have no zero flag: without a backing file the cluster is freed.
   */
  async writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    const { g, header, dataFile, lock, writeback } = this.parts;
    if (opts.allocate) throw new NotSupportedError('qcow2: preallocating zero writes is not supported yet', this.parts.ctx('write-zeroes', offset, length));
    await lock.run(async () => {
      const cs = g.clusterSize;
      for (let pos = offset; pos < offset + length;) {
        const guestBase = pos - (pos % cs);
        const end = Math.min(guestBase + cs, offset + length);
        // The image's last cluster counts as whole when the request runs to the end of the image.
        const whole = pos === guestBase && (end === guestBase + cs || end === this.parts.size());
        await this.zeroCluster(guestBase, pos - guestBase, end - pos, whole, !!opts.mayUnmap);
        pos = end;
      }
      await writeback.relieveCachePressure();
    });
    if (header.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW) {
      // A raw data file must stay a faithful raw image of the guest.
      await dataFile.writeZeroes(offset, length, { mayUnmap: opts.mayUnmap });
    }
  }

  private async zeroCluster(guestBase: number, inCluster: number, length: number, whole: boolean, mayUnmap: boolean): Promise<void> {
    const { g, header, mapping, editor, hasBacking: backing } = this.parts;
    const current = await mapping.mapRun(guestBase + inCluster, length);
    const isZero = current.sub === Sub.ZeroPlain || current.sub === Sub.ZeroAlloc;
    const emptyHere = (current.sub === Sub.UnallocatedPlain || current.sub === Sub.UnallocatedAlloc) && !backing;
    if (isZero && current.length >= length) return;
    if (g.extendedL2) {
      if (emptyHere && current.length >= length && !whole) return;
      return this.zeroSubclusters(guestBase, inCluster, length, mayUnmap);
    }
    // Part of a cluster that is empty anyway: QEMU marks the whole cluster zero, and so do we.
    if (!whole && !(emptyHere && header.version >= 3 && (await mapping.mapRun(guestBase, g.clusterSize)).length >= Math.min(g.clusterSize, this.parts.size() - guestBase))) {
      throw new NotSupportedError('qcow2: zeroing part of a cluster', this.parts.ctx('write-zeroes', guestBase + inCluster, length));
    }
    if (emptyHere && header.version === 2) return;
    const { entry, view } = await editor.entryForWrite(guestBase);
    const old = decode(view, entry, 0);
    let next: bigint;
    if (header.version === 2) {
      if (backing) throw new NotSupportedError('qcow2 v2: no zero clusters over a backing file', this.parts.ctx('write-zeroes', guestBase, length));
      next = 0n;
      editor.freeOld(old, view, entry);
    } else if (mayUnmap || old.sub === Sub.Compressed || !old.copied || old.hostCluster === 0) {
      next = OFLAG_ZERO;
      editor.freeOld(old, view, entry);
    } else {
      // Keep the host cluster, reading as zeros (ZERO_ALLOC), as QEMU does without unmap.
      next = BigInt(old.hostCluster) | OFLAG_COPIED | OFLAG_ZERO;
    }
    if (g.hasDataFile && next !== 0n && old.copied) next |= OFLAG_COPIED;
    view.dv.setBigUint64(entry * 8, next);
  }

  private async zeroSubclusters(guestBase: number, inCluster: number, length: number, mayUnmap: boolean): Promise<void> {
    const { g, editor } = this.parts;
    const cs = g.clusterSize;
    const ss = g.subclusterSize;
    const validEnd = Math.min(cs, this.parts.size() - guestBase);
    const first = Math.ceil(inCluster / ss);
    const end = inCluster + length;
    const last = end >= validEnd ? 32 : Math.floor(end / ss);
    if (first * ss !== inCluster || (last < 32 && last * ss !== end) || first >= last) {
      throw new NotSupportedError('qcow2: zeroing part of a subcluster', this.parts.ctx('write-zeroes', guestBase + inCluster, length));
    }
    const { entry, view } = await editor.entryForWrite(guestBase);
    const old = decode(view, entry, 0);
    const dv = view.dv;
    const hosted = old.hostCluster !== 0 || (g.hasDataFile && old.copied);
    if (first === 0 && last === 32 && (mayUnmap || !old.copied || old.sub === Sub.Compressed || !hosted)) {
      editor.freeOld(old, view, entry);
      dv.setBigUint64(entry * 16, g.hasDataFile && hosted ? OFLAG_COPIED : 0n);
      dv.setBigUint64(entry * 16 + 8, 0xffffffff00000000n);
    } else {
      if (old.sub === Sub.Compressed || (hosted && !old.copied)) {
        throw new NotSupportedError('qcow2: zeroing subclusters of a shared cluster', this.parts.ctx('write-zeroes', guestBase + inCluster, length));
      }
      let bitmap = dv.getBigUint64(entry * 16 + 8);
      for (let i = first; i < last; i++) bitmap = (bitmap & ~(1n << BigInt(i))) | (1n << BigInt(i + 32));
      dv.setBigUint64(entry * 16 + 8, bitmap);
    }
  }

  /**
   * Discards whole clusters, as QEMU's qcow2 does for a guest discard: v3 images read zeros
   * afterwards (the zero flag, or all-zero subclusters); v2 images fall back to the backing file.
   * Freed host clusters are punched out of the file at the next flush.
   */
  async discard(offset: number, length: number): Promise<void> {
    const { g, header, dataFile, editor, lock, writeback, hasBacking } = this.parts;
    // A raw data file must keep the guest's bytes: discarding changes nothing there. A v2 image
    // over a backing file has no zero flag, and unallocating would bring the backing data back.
    if (header.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW) return;
    if (header.version === 2 && hasBacking) return;
    await lock.run(async () => {
      const cs = g.clusterSize;
      for (let guestBase = offset; guestBase < offset + length; guestBase += cs) {
        const { entry, view } = await editor.entryForWrite(guestBase);
        const old = decode(view, entry, 0);
        const allocated = old.hostCluster !== 0 || old.sub === Sub.Compressed || (g.hasDataFile && old.copied);
        if (!hasBacking && !allocated) continue;
        editor.freeOld(old, view, entry);
        if (g.extendedL2) {
          view.dv.setBigUint64(entry * 16, 0n);
          view.dv.setBigUint64(entry * 16 + 8, 0xffffffff00000000n);
        } else {
          view.dv.setBigUint64(entry * 8, header.version >= 3 ? OFLAG_ZERO : 0n);
        }
      }
      if (g.hasDataFile) await dataFile.discard(offset, Math.min(length, dataFile.size - offset));
      await writeback.relieveCachePressure();
    });
  }
}
