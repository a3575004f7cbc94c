import type { Extent } from '../../../core/types.js';
import { allocationIsData, allocationIsZero, depthIsPresent } from '../../../nbd/protocol.js';
import type { StatusExtent } from '../../../nbd/client/client.js';

/**
 * Turns one BLOCK_STATUS answer into Extents from `offset`, clipped to `maxLength`.
 *
 * base:allocation gives data/zero as QEMU's nbd driver reads it: HOLE clear is data, ZERO set reads
 * as zeros, and a range that is neither is not allocated. Every run is at host offset = guest
 * offset in the export, as QEMU reports it. qemu:allocation-depth, when the server offers it,
 * adds what base:allocation cannot say: depth 0 means no layer behind the export holds the range.
 */
export function toExtents(offset: number, maxLength: number, base: readonly StatusExtent[],
  depth: readonly StatusExtent[] | undefined, filename: string): Extent[] {
  const out: Extent[] = [];
  const end = offset + maxLength;
  let pos = offset;
  let bi = 0;
  let bEnd = offset + (base[0]?.length ?? 0);
  let di = 0;
  let dEnd = depth ? offset + (depth[0]?.length ?? 0) : Infinity;
  while (pos < end && bi < base.length && (!depth || di < depth.length)) {
    const next = Math.min(bEnd, dEnd, end);
    const flags = base[bi]!.flags;
    const data = allocationIsData(flags);
    const zero = allocationIsZero(flags);
    const present = depth ? depthIsPresent(depth[di]!.flags) : data || zero;
    const ext: Extent = { offset: pos, length: next - pos, data, zero, present, depth: 0, hostOffset: pos, hostFile: filename };
    const last = out[out.length - 1];
    if (last && sameKind(last, ext)) last.length += ext.length;
    else out.push(ext);
    pos = next;
    if (pos === bEnd && ++bi < base.length) bEnd += base[bi]!.length;
    if (depth && pos === dEnd && ++di < depth.length) dEnd += depth[di]!.length;
  }
  return out;
}

function sameKind(a: Extent, b: Extent): boolean {
  return a.data === b.data && a.zero === b.zero && a.present === b.present;
}
