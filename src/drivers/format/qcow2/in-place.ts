import type { BlockNode } from '../../../core/block-node.js';
import { AUTOCLEAR } from './constants.js';
import { Sub } from './l2-entry.js';
import type { Qcow2Node } from './qcow2-node.js';

/** Whole guest clusters [offset, offset + length) lying on consecutive host clusters from `host`. */
export interface InPlaceRun {
  offset: number;
  length: number;
  host: number;
}

/**
 * Which guest clusters a data write may overwrite in place, with a pwrite at their host offset
 * and nothing else: for the NBD data plane (src/nbd/server/cluster-map.ts), which then writes
 * them without this node. The clusters DataWriter writes in place (Normal and COPIED, so no
 * snapshot or other L2 entry sees the cluster) and that need nothing else from the node:
 * - every subcluster of the cluster is Normal and COPIED (with extended L2 too: the run the
 *   mapping gives covers the whole cluster);
 * - the cluster lies in the image file (no external data file) and inside it (DataWriter refuses
 *   a cluster past the end as corruption: a pwrite would grow the file);
 * - its refcount is exactly 1, so the allocator cannot hand it out as metadata while the plane
 *   still writes it, and it is not metadata now (the overlap check a write here would make);
 * - the image is writable, not marked corrupt, and no persistent bitmap still claims to be kept
 *   up to date (maintain() clears their autoclear bit first, as the first guest write does).
 * Anything else (including every cluster of a node that is not qcow2) is not in the answer: the
 * write goes through the node.
 *
 * The answer holds until a request that may move, free or re-reference a cluster runs; the
 * caller drops it around such requests (see the cluster map's barrier). `offset` and `length`
 * should be cluster-aligned; partial clusters at either end are left out.
 */
export async function inPlaceRuns(node: BlockNode, offset: number, length: number): Promise<InPlaceRun[]> {
  if (node.driver !== 'qcow2' || node.readOnly || inPlaceRefused(node)) return [];
  return (node as Qcow2Node).maintain('in-place query', async (p) => {
    if (p.dataFile !== p.file || (p.header.autoclearFeatures & AUTOCLEAR.BITMAPS) !== 0n) return [];
    const cs = p.g.clusterSize;
    const refcounts = await p.refcounts.get();
    const fileEnd = Math.ceil(p.file.size / cs) * cs;
    const out: InPlaceRun[] = [];
    const end = Math.floor((offset + length) / cs) * cs;
    for (let pos = Math.ceil(offset / cs) * cs; pos < end;) {
      const run = await p.mapping.mapRun(pos, end - pos);
      const whole = Math.floor(run.length / cs) * cs;
      if (run.sub === Sub.Normal && run.copied) {
        for (let at = 0; at < whole; at += cs) {
          const host = run.host + at;
          if (host + cs > fileEnd || p.guard.overlap(refcounts, host, cs) !== undefined || (await refcounts.get(host / cs)) !== 1) continue;
          const last = out[out.length - 1];
          if (last && last.offset + last.length === pos + at && last.host + last.length === host) last.length += cs;
          else out.push({ offset: pos + at, length: cs, host });
        }
      }
      // A run shorter than a cluster (subclusters of different kinds): that cluster is mixed.
      pos += whole > 0 ? whole : cs;
    }
    return out;
  });
}

/** True once writes must go through the node for good: the image was marked corrupt. */
export function inPlaceRefused(node: BlockNode): boolean {
  return node.driver === 'qcow2' && (node as Qcow2Node).corrupt;
}
