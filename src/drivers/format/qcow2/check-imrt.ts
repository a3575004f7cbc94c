/**
 * QEMU's in-memory refcount table (IMRT): how many references check found for each host cluster,
 * one entry per cluster of the file (growing as references or new allocations reach further).
 *
 * Entries are as wide as the image's refcounts need (a byte for widths up to 8 bits, 16 and 32
 * bits, a double for 64-bit refcounts, exact to 2^53), so memory stays close to what the
 * refcount blocks themselves take. A rebuild writes slices of this table as new refcount blocks.
 */
export class InMemoryRefcounts {
  /** The largest count the image's refcount width can store (QEMU's refcount_max). */
  readonly max: number;
  private counts: Uint8Array | Uint16Array | Uint32Array | Float64Array;
  private clusters: number;

  constructor(clusters: number, readonly refcountBits: number) {
    this.max = refcountBits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** refcountBits - 1;
    this.clusters = clusters;
    this.counts = this.storage(clusters);
  }

  /** Clusters covered: the file's clusters, and any counted or allocated beyond them. */
  get length(): number {
    return this.clusters;
  }

  get(cluster: number): number {
    return cluster < this.clusters ? this.counts[cluster]! : 0;
  }

  /**
   * Counts `times` more references to `cluster`, up to `max`; returns how many did not fit
   * (QEMU's "overflow": each is an error, and the count stays at max).
   */
  add(cluster: number, times: number): number {
    this.cover(cluster + 1);
    const now = this.counts[cluster]!;
    const room = this.max - now;
    this.counts[cluster] = now + Math.min(room, times);
    return Math.max(0, times - room);
  }

  set(cluster: number, value: number): void {
    this.cover(cluster + 1);
    this.counts[cluster] = value;
  }

  /** Forgets every count (for the recount after a rebuild), keeping the length. */
  clear(): void {
    this.counts.fill(0);
  }

  /**
   * `count` contiguous clusters with no reference, from `from` on (past the end, new clusters),
   * now counted once each; returns the first. QEMU's alloc_clusters_imrt.
   */
  allocate(count: number, from: number): number {
    let run = 0;
    let c = from;
    for (; c < this.clusters && run < count; c++) run = this.counts[c] === 0 ? run + 1 : 0;
    const start = c - run;
    for (let i = start; i < start + count; i++) this.set(i, 1);
    return start;
  }

  /** The first cluster at or after `from` with no reference (the end when there is none). */
  firstFree(from: number): number {
    let c = from;
    while (c < this.clusters && this.counts[c] !== 0) c++;
    return c;
  }

  /** Grows to cover `clusters` clusters, doubling the storage so repeated growth stays linear. */
  private cover(clusters: number): void {
    if (clusters <= this.clusters) return;
    if (clusters > this.counts.length) {
      const grown = this.storage(Math.max(clusters, this.counts.length * 2));
      grown.set(this.counts);
      this.counts = grown;
    }
    this.clusters = clusters;
  }

  private storage(clusters: number): Uint8Array | Uint16Array | Uint32Array | Float64Array {
    const bits = this.refcountBits;
    if (bits <= 8) return new Uint8Array(clusters);
    if (bits === 16) return new Uint16Array(clusters);
    if (bits === 32) return new Uint32Array(clusters);
    return new Float64Array(clusters);
  }
}
