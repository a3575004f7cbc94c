import type { BlockNode } from '../core/block-node.js';

/**
 * Sources laid end to end as one address space (qemu-img convert's several inputs): which source
 * holds a target offset, and reads that may run from one source into the next (a whole cluster
 * for a compressed target, as convert_co_read does).
 */
export class SourceSpan {
  /** Where each source starts in the target. */
  private readonly starts: number[] = [];
  readonly size: number;

  constructor(readonly sources: readonly BlockNode[]) {
    let base = 0;
    for (const s of sources) {
      this.starts.push(base);
      base += s.size;
    }
    this.size = base;
  }

  /** The source holding target offset `offset` (< size), and the offset inside it. */
  locate(offset: number): { source: BlockNode; sourceOffset: number } {
    let lo = 0;
    let hi = this.sources.length - 1;
    // The last source that starts at or before offset: never an empty one, since the source
    // after an empty one starts at the same place.
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return { source: this.sources[lo]!, sourceOffset: offset - this.starts[lo]! };
  }

  /** Fills `into` with the bytes at target offset `offset`, across source boundaries. */
  async read(offset: number, into: Uint8Array): Promise<void> {
    for (let done = 0; done < into.byteLength;) {
      const { source, sourceOffset } = this.locate(offset + done);
      const n = Math.min(into.byteLength - done, source.size - sourceOffset);
      await source.read(sourceOffset, into.subarray(done, done + n));
      done += n;
    }
  }
}
