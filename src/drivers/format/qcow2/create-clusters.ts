/**
 * A set of cluster indices kept as sorted, disjoint, non-adjacent half-open runs [start, end).
 * The allocations of image creation are long contiguous runs, so a handful of runs describe
 * millions of clusters.
 */
export class ClusterRuns {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];

  /** Index of the first run that ends after x. */
  private find(x: number): number {
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! <= x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  has(x: number): boolean {
    const i = this.find(x);
    return i < this.starts.length && this.starts[i]! <= x;
  }

  /** Calls fn(start, end) for every piece of the set inside [a, b), in order. */
  forEachIn(a: number, b: number, fn: (start: number, end: number) => boolean | void): void {
    for (let i = this.find(a); i < this.starts.length && this.starts[i]! < b; i++) {
      if (fn(Math.max(this.starts[i]!, a), Math.min(this.ends[i]!, b)) === false) return;
    }
  }

  /** The largest member below x, or -1. */
  lastBelow(x: number): number {
    const i = this.find(x);
    if (i < this.starts.length && this.starts[i]! < x) return x - 1;
    return i > 0 ? this.ends[i - 1]! - 1 : -1;
  }

  /** Adds [a, b), which must not contain a member. */
  add(a: number, b: number): void {
    if (a >= b) return;
    const i = this.find(a);
    if (i < this.starts.length && this.starts[i]! < b) throw new Error(`qcow2 create: cluster ${Math.max(a, this.starts[i]!)} allocated twice`);
    const joinLeft = i > 0 && this.ends[i - 1] === a;
    const joinRight = i < this.starts.length && this.starts[i] === b;
    if (joinLeft && joinRight) {
      this.ends[i - 1] = this.ends[i]!;
      this.starts.splice(i, 1);
      this.ends.splice(i, 1);
    } else if (joinLeft) {
      this.ends[i - 1] = b;
    } else if (joinRight) {
      this.starts[i] = a;
    } else {
      this.starts.splice(i, 0, a);
      this.ends.splice(i, 0, b);
    }
  }

  /** Removes [a, b), which must lie inside one run. */
  remove(a: number, b: number): void {
    if (a >= b) return;
    const i = this.find(a);
    const s = this.starts[i];
    const e = this.ends[i];
    if (s === undefined || e === undefined || s > a || e < b) throw new Error(`qcow2 create: freeing clusters [${a}, ${b}) that are not allocated`);
    if (s === a && e === b) {
      this.starts.splice(i, 1);
      this.ends.splice(i, 1);
    } else if (s === a) {
      this.starts[i] = b;
    } else if (e === b) {
      this.ends[i] = a;
    } else {
      this.ends[i] = a;
      this.starts.splice(i + 1, 0, b);
      this.ends.splice(i + 1, 0, e);
    }
  }
}
