import type { BlockNode } from '../../core/block-node.js';
import { inPlaceRefused, inPlaceRuns } from '../../drivers/format/qcow2/in-place.js';
import { native, type NbdClusterMapHandle } from '../../native/index.js';

/**
 * Where a qcow2 export's clusters lie in its image file, for the native data plane to read
 * them, and overwrite those it may, without JavaScript (native/nbd-cluster-map.h). Only plain
 * allocated clusters are mapped: block status says data, not zero, at depth 0, in the image file
 * itself (not compressed, not a backing file's, not an external data file's). On a writable
 * export the qcow2 driver then names the mapped clusters a write may overwrite in place
 * (in-place.ts: COPIED, refcount 1, inside the file), and those are marked writable. It is
 * filled when the first connection comes and again after each forwarded read or write, and
 * emptied around every request that may move, free or re-reference a cluster: such a request
 * waits until no plane read or write is using the map, so a cluster freed and reused is never
 * read or written through its old place.
 */
export class ClusterMap {
  readonly handle: NbdClusterMapHandle;
  private readonly clusterSize: number;

  private constructor(private readonly node: BlockNode, private readonly hostFile: string, clusterSize: number,
    /** The export takes writes: mark the clusters they may overwrite in place. */
    private readonly writable: boolean) {
    this.clusterSize = clusterSize;
    this.handle = new native!.NbdClusterMap(clusterSize, Math.ceil(node.size / clusterSize));
    void this.fill(0, node.size);
  }

  /** The map of a qcow2 node, or undefined when its clusters cannot be read straight from `file`. */
  static forNode(node: BlockNode, file: BlockNode, writable: boolean): ClusterMap | undefined {
    if (!native || node.driver !== 'qcow2' || node.children.has('data-file') || node.detectZeroes !== 'off') return undefined;
    const clusterSize = node.imageInfo()['cluster-size'];
    if (typeof clusterSize !== 'number' || !(clusterSize >= 512)) return undefined;
    // 16 bytes a cluster (its entry, hold count and stamp): up to 16 MiB (a 64 GiB image of 64 KiB clusters).
    if (Math.ceil(node.size / clusterSize) > MAX_CLUSTERS) return undefined;
    return new ClusterMap(node, file.filename, clusterSize, writable && !node.readOnly);
  }

  /**
   * Runs `op` with no plane read or write using the map, the entries of its range cleared first.
   * With `refill`, the range is mapped again once `op` is done, before it resolves (its reply
   * waits): a client's next request on the same clusters cannot come before that, so a client
   * that writes one request at a time finds them mapped. The plane goes on meanwhile; only this
   * range stays out of its reach until then.
   */
  async around<T>(offset: number, length: number, op: () => Promise<T>, refill = false): Promise<T> {
    const start = Math.min(offset, this.node.size);
    const held = Math.min(length, this.node.size - start);
    this.handle.hold(start, held);
    let lifted = false;
    try {
      while (!this.handle.idle()) await new Promise<void>((resolve) => setImmediate(resolve));
      const result = await op();
      this.handle.lift();
      lifted = true;
      // Only its own clusters: the map lets a fill by the holder past that hold, no other.
      if (refill && held > 0) await this.fill(start, held, 1);
      return result;
    } finally {
      if (!lifted) this.handle.lift();
      this.handle.release(start, held);
    }
  }

  /**
   * Maps the plain allocated clusters of [offset, offset + length), as block status says now,
   * and marks those a write may overwrite in place writable. Clusters a request held meanwhile
   * are left out (the map refuses them): what was seen of them may be gone. `own` is 1 when the
   * caller holds the range itself (see around).
   */
  async fill(offset: number, length: number, own = 0): Promise<void> {
    const cs = this.clusterSize;
    const generation = this.handle.generation();
    const end = Math.min(this.node.size, Math.ceil(Math.min(offset + length, this.node.size) / cs) * cs);
    try {
      for (let pos = Math.floor(offset / cs) * cs; pos < end;) {
        const list = await this.node.blockStatusList(pos, end - pos);
        let from = Infinity;
        let to = 0;
        for (const e of list) {
          if (!e.data || e.zero || e.depth !== 0 || e.compressed || e.hostOffset === undefined || e.hostFile !== this.hostFile) continue;
          const first = Math.ceil(e.offset / cs);
          const last = Math.floor((e.offset + e.length) / cs);
          if (last <= first) continue;
          this.handle.set(generation, first, last - first, e.hostOffset + first * cs - e.offset, own);
          from = Math.min(from, first * cs);
          to = last * cs;
        }
        if (this.writable && to > from) {
          for (const run of await inPlaceRuns(this.node, from, to - from)) this.handle.markWritable(generation, run.offset / cs, run.length / cs, run.host, own);
        }
        const tail = list[list.length - 1];
        if (!tail) return;
        pos = tail.offset + tail.length;
      }
    } catch {
      // An image block status cannot walk is simply not mapped: its reads go through JavaScript.
    }
  }

  /**
   * After a forwarded request: once the image is marked corrupt, nothing may be written in place
   * any more (the node refuses every write until a repair), so the whole map is emptied; later
   * fills map clusters for reads only.
   */
  afterRequest(): void {
    if (this.writable && inPlaceRefused(this.node)) {
      this.handle.hold(0, this.node.size);
      this.handle.lift();
      this.handle.release(0, this.node.size);
    }
  }
}

const MAX_CLUSTERS = 2 ** 20;
