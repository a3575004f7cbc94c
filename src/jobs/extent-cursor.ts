import type { BlockNode } from '../core/block-node.js';
import type { Extent } from '../core/types.js';

/**
 * The extent at a position that only moves forward, fetched batch by batch: for walking two
 * images side by side (compare) without asking either for its whole map up front.
 */
export class ExtentCursor {
  private readonly batches: AsyncIterator<Extent[]>;
  private list: Extent[] = [];
  private index = 0;

  constructor(node: BlockNode, start: number, end: number) {
    this.batches = node.extentLists(start, end - start)[Symbol.asyncIterator]();
  }

  /** The extent holding `pos` (whole, so it may begin before pos); pos must not go backwards. */
  async at(pos: number): Promise<Extent> {
    for (;;) {
      const e = this.list[this.index];
      if (e && pos < e.offset + e.length) return e;
      if (e) this.index++;
      else {
        const next = await this.batches.next();
        if (next.done) throw new RangeError(`no extent holds offset ${pos}`);
        [this.list, this.index] = [next.value, 0];
      }
    }
  }
}
