import { performance } from 'node:perf_hooks';

/**
 * The data runs of a stretch of a sparse file, as one batched SEEK_DATA/SEEK_HOLE walk found
 * them: [start, scannedTo) is fully described, `runs` holds [s0, e0, s1, e1, …] in order.
 */
export class DataMap {
  private readonly holesUntil: number;

  constructor(
    readonly start: number,
    readonly scannedTo: number,
    private readonly runs: Float64Array,
    /** How long hole answers stay trustworthy (Infinity when no one else can write the file). */
    holeTtlMs: number,
  ) {
    this.holesUntil = performance.now() + holeTtlMs;
  }

  /** Data stays data until we write (only our own discard makes holes); holes age. */
  get holesValid(): boolean {
    return performance.now() < this.holesUntil;
  }

  /**
   * The run at `offset` clipped to `end`, or undefined when this map cannot answer. A hole is
   * answered only when `allowHoles`: a fresh walk, or a file no one else may write.
   */
  lookup(offset: number, end: number, allowHoles = this.holesValid): { length: number; data: boolean } | undefined {
    if (offset < this.start || offset >= this.scannedTo) return undefined;
    const runs = this.runs;
    // Binary search for the first run that ends after offset.
    let lo = 0;
    let hi = runs.length >> 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (runs[mid * 2 + 1]! <= offset) lo = mid + 1;
      else hi = mid;
    }
    if (lo < runs.length >> 1 && runs[lo * 2]! <= offset) {
      return { length: Math.min(runs[lo * 2 + 1]!, end) - offset, data: true };
    }
    if (!allowHoles) return undefined;
    const next = lo < runs.length >> 1 ? runs[lo * 2]! : this.scannedTo;
    return { length: Math.min(next, end) - offset, data: false };
  }
}
