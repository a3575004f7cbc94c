import type { BlockNode } from '../../core/block-node.js';
import { native, type NbdClusterMapHandle } from '../../native/index.js';

/**
 * Where a qcow2 export's clusters lie in its image file, for the native data plane to read
 * them without JavaScript (native/nbd-cluster-map.h). Only plain allocated clusters are mapped:
 * block status says data, not zero, at depth 0, in the image file itself (not compressed, not a
 * backing file's, not an external data file's). It is filled from block status when the first
 * connection comes and again after each forwarded read, and emptied around every request that
 * may move or free a cluster: such a request waits until no plane read is using the map, so a
 * cluster freed and reused is never read through its old place.
 */
export class ClusterMap {
  readonly handle: NbdClusterMapHandle;
  private readonly clusterSize: number;

  private constructor(private readonly node: BlockNode, private readonly hostFile: string, clusterSize: number) {
    this.clusterSize = clusterSize;
    this.handle = new native!.NbdClusterMap(clusterSize, Math.ceil(node.size / clusterSize));
    void this.fill(0, node.size);
  }

  /** The map of a qcow2 node, or undefined when its clusters cannot be read straight from `file`. */
  static forNode(node: BlockNode, file: BlockNode): ClusterMap | undefined {
    if (!native || node.driver !== 'qcow2' || node.children.has('data-file') || node.detectZeroes !== 'off') return undefined;
    const clusterSize = node.imageInfo()['cluster-size'];
    if (typeof clusterSize !== 'number' || !(clusterSize >= 512)) return undefined;
    // A map entry is 8 bytes: up to 8 MiB of them (a 64 GiB image of 64 KiB clusters).
    if (Math.ceil(node.size / clusterSize) > MAX_CLUSTERS) return undefined;
    return new ClusterMap(node, file.filename, clusterSize);
  }

  /** Runs `op` with no plane read using the map, the entries of its range cleared first. */
  async around<T>(offset: number, length: number, op: () => Promise<T>): Promise<T> {
    const start = Math.min(offset, this.node.size);
    this.handle.hold(start, Math.min(length, this.node.size - start));
    try {
      while (!this.handle.idle()) await new Promise<void>((resolve) => setImmediate(resolve));
      return await op();
    } finally {
      this.handle.release();
    }
  }

  /** Maps the plain allocated clusters of [offset, offset + length), as block status says now. */
  async fill(offset: number, length: number): Promise<void> {
    const cs = this.clusterSize;
    const generation = this.handle.generation();
    const end = Math.min(this.node.size, Math.ceil(Math.min(offset + length, this.node.size) / cs) * cs);
    try {
      for (let pos = Math.floor(offset / cs) * cs; pos < end;) {
        const list = await this.node.blockStatusList(pos, end - pos);
        // A request that may change the mapping came meanwhile: what we saw may be gone.
        if (this.handle.generation() !== generation) return;
        for (const e of list) {
          if (!e.data || e.zero || e.depth !== 0 || e.compressed || e.hostOffset === undefined || e.hostFile !== this.hostFile) continue;
          const first = Math.ceil(e.offset / cs);
          const last = Math.floor((e.offset + e.length) / cs);
          if (last > first && !this.handle.set(generation, first, last - first, e.hostOffset + first * cs - e.offset)) return;
        }
        const tail = list[list.length - 1];
        if (!tail) return;
        pos = tail.offset + tail.length;
      }
    } catch {
      // An image block status cannot walk is simply not mapped: its reads go through JavaScript.
    }
  }
}

const MAX_CLUSTERS = 2 ** 20;
