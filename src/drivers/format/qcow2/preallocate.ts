import { OFLAG_COPIED } from './constants.js';
import type { Qcow2Preallocation } from './create-options.js';
import { decode, Sub } from './l2-entry.js';
import type { WritableEntry } from './l2-editor.js';
import type { Qcow2Internals, Qcow2Node } from './qcow2-node.js';

/** QEMU's preallocation modes for a range of an existing image (qemu-img resize --preallocation). */
type Mode = Exclude<Qcow2Preallocation, 'off'>;

/**
 * Allocates a host cluster for every cluster of [offset, offset + length) that has none, as
 * QEMU's preallocate_co() does when qcow2_co_truncate grows an image with preallocation: the L2
 * entries point at the clusters, which read as zeros. `metadata` leaves the new host range
 * sparse, `falloc` reserves it (fallocate), `full` writes zeros. Clusters that already hold
 * something (data, a compressed or a preallocated zero cluster) are left as they are.
 */
export function preallocateQcow2(node: Qcow2Node, offset: number, length: number, mode: Mode): Promise<void> {
  return node.maintain('preallocate', async (p) => {
    const cs = p.g.clusterSize;
    // One L2 table's worth of clusters per batch: the pinned dirty slices stay bounded.
    const batch = p.g.l2Entries;
    const end = offset + length;
    for (let guest = Math.floor(offset / cs) * cs; guest < end;) {
      const empty: WritableEntry[] = [];
      const guests: number[] = [];
      for (; guest < end && empty.length < batch; guest += cs) {
        const at = await p.editor.entryForWrite(guest);
        const old = decode(at.view, at.entry, 0);
        const hosted = old.hostCluster !== 0 || (p.g.hasDataFile && old.copied) || old.sub === Sub.Compressed;
        if (hosted) continue;
        empty.push(at);
        guests.push(guest);
      }
      if (empty.length > 0) await allocateBatch(p, empty, guests, mode);
      await p.writeback.relieveCachePressure();
    }
    await p.writeback.flush();
  });
}

async function allocateBatch(p: Qcow2Internals, entries: WritableEntry[], guests: number[], mode: Mode): Promise<void> {
  const { g } = p;
  const cs = g.clusterSize;
  // With an external data file the host offset is the guest offset; else one contiguous run.
  const first = g.hasDataFile ? undefined : await (await p.refcounts.get()).allocate(entries.length);
  const hosts = guests.map((guest, i) => (first === undefined ? guest : first + i * cs));
  for (const [start, end] of runs(hosts, cs)) await zeroHostRange(p, start, end, mode);
  p.writeback.dataChanged();
  entries.forEach(({ entry, view }, i) => {
    view.dv.setBigUint64(entry * g.entryBytes, BigInt(hosts[i]!) | OFLAG_COPIED);
    // Every subcluster allocated: the cluster reads as the zeros on the host.
    if (g.extendedL2) view.dv.setBigUint64(entry * 16 + 8, 0xffffffffn);
  });
}

/**
 * Makes [start, end) of the data file read as zeros in the way `mode` asks. A free cluster
 * below the end of the file may hold what an earlier owner left there, so it is zeroed too.
 */
async function zeroHostRange(p: Qcow2Internals, start: number, end: number, mode: Mode): Promise<void> {
  const { dataFile, guard } = p;
  await guard.check(start, end - start);
  const oldEnd = dataFile.size;
  if (end > oldEnd) await dataFile.resize(end);
  if (mode === 'full') {
    const zeros = new Uint8Array(Math.min(FULL_CHUNK, end - start));
    for (let at = start; at < end; at += zeros.byteLength) await dataFile.write(at, zeros.subarray(0, Math.min(zeros.byteLength, end - at)));
  } else if (mode === 'falloc') {
    await dataFile.writeZeroes(start, end - start, { allocate: true });
  } else if (start < oldEnd) {
    await dataFile.writeZeroes(start, Math.min(end, oldEnd) - start, { mayUnmap: true });
  }
}

const FULL_CHUNK = 1024 * 1024;

/** Host offsets (each a cluster) merged into contiguous [start, end) runs. */
function runs(hosts: number[], cs: number): [number, number][] {
  const out: [number, number][] = [];
  for (const h of hosts) {
    const last = out[out.length - 1];
    if (last && last[1] === h) last[1] = h + cs;
    else out.push([h, h + cs]);
  }
  return out;
}
