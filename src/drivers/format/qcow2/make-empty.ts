import { decode, Sub } from './l2-entry.js';
import type { Qcow2Internals, Qcow2Node } from './qcow2-node.js';
import { canRebuildEmpty, rebuildEmpty } from './rebuild-empty.js';

/**
 * Empties the active image (QEMU's qcow2_make_empty, what qemu-img commit does to the top once
 * its data is in the base), so that it reads through to its backing file again: rebuilt from
 * nothing where QEMU would (rebuild-empty.ts), which is quick whatever the image held; else
 * cluster by cluster.
 */
export async function makeEmptyQcow2(node: Qcow2Node): Promise<void> {
  await node.maintain('make-empty', (p) => (canRebuildEmpty(p) ? rebuildEmpty(p) : freeEveryCluster(p)));
}

/**
 * QEMU's fallback, which works for every image: every L2 entry of the active state becomes
 * unallocated and the host clusters it held are freed (punched at the flush); snapshots keep
 * their clusters, L2 tables stay.
 */
async function freeEveryCluster(p: Qcow2Internals): Promise<void> {
  const { g, mapping, editor, writeback, dataFile } = p;
  const cs = g.clusterSize;
  const size = p.header.size;
  // The next cluster not yet emptied: a cluster of several runs (subclusters) is emptied once.
  let next = 0;
  for (let pos = 0; pos < size;) {
    const run = await mapping.mapRun(pos, size - pos);
    const end = pos + run.length;
    if (run.sub !== Sub.UnallocatedPlain) {
      for (let guest = Math.max(next, pos - (pos % cs)); guest < end; guest += cs) {
        const { entry, view } = await editor.entryForWrite(guest);
        editor.freeOld(decode(view, entry, 0), view, entry);
        view.dv.setBigUint64(entry * g.entryBytes, 0n);
        if (g.extendedL2) view.dv.setBigUint64(entry * g.entryBytes + 8, 0n);
        // An external data file holds guest data at the guest offset, outside the refcounts.
        if (g.hasDataFile && guest < dataFile.size) await dataFile.discard(guest, Math.min(cs, dataFile.size - guest));
        next = guest + cs;
      }
      await writeback.relieveCachePressure();
    }
    pos = end;
  }
  await writeback.flush();
}
