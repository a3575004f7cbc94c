import type { BlockNode } from '../core/block-node.js';
import { FilterNode } from '../core/filter-node.js';
import type { Extent, IoOptions } from '../core/types.js';
import { backingChain } from './backing-chain.js';
import type { RateLimit } from './rate-limit.js';

/**
 * An image as a commit reads it: the top `layers` images of its chain (the top and the backing
 * files above the base) are what the copy engine must copy, the rest is the base's business.
 * Block status shows a range some of those layers allocate (data or an explicit zero) as the
 * image's own (depth 0), and everything else as left to the backing file (depth 1), which is
 * how the engine tells what to copy into a target that has a backing file (convert -B).
 * A layer above the base that is shorter than its backing file reads zeros past its end, which
 * hide what the base holds there: those zeros are the image's own too, as QEMU commits them.
 * Reads pass through, paced by the rate limit.
 */
export class AboveBaseView extends FilterNode {
  readonly driver = 'above-base';

  /** Whether the walk of block status, stopping at depth d, stopped above the base at a layer's end. */
  private readonly shortLayer: boolean[];

  constructor(child: BlockNode, private readonly layers: number, private readonly rate?: RateLimit) {
    super(child, { readOnly: true });
    // A chain cut just above the base ends without a backing file there: nothing is short.
    this.shortLayer = backingChain(child).slice(0, layers).map((node) => node.backing !== undefined);
  }

  protected override async _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    await this.rate?.take(into.byteLength, opts.signal);
    await this.child.read(offset, into, opts);
  }

  protected override async _blockStatusList(offset: number, maxLength: number, opts: IoOptions): Promise<Extent[]> {
    const list = await this.child.blockStatusList(offset, maxLength, opts);
    const out: Extent[] = [];
    for (const e of list) {
      const last = out[out.length - 1];
      let view: Extent;
      if (e.present && e.depth < this.layers) {
        view = { offset: e.offset, length: e.length, data: e.data, zero: e.zero, present: true, depth: 0 };
        // Where the bytes lie in a host file, so that the copy can move them in the kernel.
        if (e.data && !e.compressed && e.hostOffset !== undefined && e.hostFile !== undefined) [view.hostOffset, view.hostFile] = [e.hostOffset, e.hostFile];
      } else if (!e.present && this.shortLayer[e.depth]) view = { offset: e.offset, length: e.length, data: false, zero: true, present: true, depth: 0 };
      else view = { offset: e.offset, length: e.length, data: false, zero: false, present: false, depth: 1 };
      // Neighbours alike after the relabelling are one run (fewer, larger copy requests).
      if (last && last.depth === view.depth && last.data === view.data && last.zero === view.zero && sameHostRun(last, view)) last.length += e.length;
      else out.push(view);
    }
    return out;
  }
}

/** Whether `next` continues `last` in its host file too (or neither lies in one). */
function sameHostRun(last: Extent, next: Extent): boolean {
  if (last.hostFile === undefined && next.hostFile === undefined) return true;
  return last.hostFile === next.hostFile && last.hostOffset !== undefined && last.hostOffset + last.length === next.hostOffset;
}
