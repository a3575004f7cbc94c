import type { BlockNode } from '../../../core/block-node.js';
import type { Qcow2Geometry } from './geometry.js';
import type { Qcow2Header } from './header.js';
import type { L2Editor } from './l2-editor.js';
import { decode } from './l2-entry.js';
import type { MetadataWriteback } from './metadata-writeback.js';
import type { OverlapGuard } from './overlap-guard.js';
import type { RefcountLoader } from './refcounts.js';
import type { Qcow2Tables } from './tables.js';

/**
 * Grows or shrinks the virtual disk (qemu-img resize), with the metadata lock held. Growing past
 * what the L1 table covers moves it to a larger place first; shrinking unallocates the clusters
 * past the new end. The caller refuses to shrink images with snapshots, as QEMU does.
 */
export async function resizeQcow2(size: number, p: {
  g: Qcow2Geometry;
  header: Qcow2Header;
  file: BlockNode;
  dataFile: BlockNode;
  tables: Qcow2Tables;
  refcounts: RefcountLoader;
  editor: L2Editor;
  writeback: MetadataWriteback;
  guard: OverlapGuard;
}): Promise<void> {
  const { g, header: h, file, tables, editor, writeback } = p;
  const cs = g.clusterSize;
  if (size < h.size) {
    // Whole clusters past the new end become unallocated; the kept part of a partial last
    // cluster stays, as QEMU leaves it.
    for (let guestBase = Math.ceil(size / cs) * cs; guestBase < h.size; guestBase += cs) {
      const l2 = tables.l1[Math.floor(guestBase / cs / g.l2Entries)] ?? 0;
      if (l2 === 0) continue;
      const { entry, view } = await editor.entryForWrite(guestBase);
      editor.freeOld(decode(view, entry, 0), view, entry);
      view.dv.setBigUint64(entry * g.entryBytes, 0n);
      if (g.extendedL2) view.dv.setBigUint64(entry * 16 + 8, 0n);
    }
  }
  const needed = Math.ceil(size / cs / g.l2Entries);
  await writeback.flush();
  const header = new Uint8Array(24);
  const dv = new DataView(header.buffer);
  dv.setBigUint64(0, BigInt(size));
  dv.setUint32(8, h.cryptMethod);
  let l1Size = h.l1Size;
  let l1Offset = h.l1TableOffset;
  if (needed > h.l1Size) {
    // A new, larger L1 on free clusters, on disk before the header points at it.
    const refcounts = await p.refcounts.get();
    const clusters = Math.ceil((needed * 8) / cs);
    l1Offset = await refcounts.allocate(clusters);
    await refcounts.writeBack();
    await file.flush();
    await tables.moveL1(l1Offset, needed);
    await file.flush();
    refcounts.free(h.l1TableOffset, Math.ceil((h.l1Size * 8) / cs));
    l1Size = needed;
  }
  dv.setUint32(12, l1Size);
  dv.setBigUint64(16, BigInt(l1Offset));
  await file.write(24, header);
  await file.flush();
  Object.assign(h, { size, l1Size, l1TableOffset: l1Offset });
  p.guard.invalidate();
  await writeback.flush();
  if (g.hasDataFile && size > p.dataFile.size) await p.dataFile.resize(size);
}
