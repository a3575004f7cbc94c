import type { BlockNode, NodeOptions } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import { FilterNode } from '../../../core/filter-node.js';
import { alignDown, alignUp } from '../../../core/limits.js';
import { RequestTracker, type Ticket } from '../../../core/request-tracker.js';
import type { Extent, IoOptions, WriteOptions, ZeroOptions } from '../../../core/types.js';
import { isAllZero } from '../../../core/zero-detect.js';
import { chunks, clip, clusterSpans, gaps, inTop, planCopy, type CopyRun, type Span } from './copy-plan.js';

/**
 * How copy-on-reads are serialised against each other and against writes: `cluster` (vdisk's
 * default) holds each cluster on its own, so readers of partly overlapping ranges wait only for
 * the clusters they share; `request` holds the whole widened request, as QEMU does.
 */
export type Serialise = 'cluster' | 'request';

export interface CopyOnReadOptions extends NodeOptions {
  /**
   * Backing hops from the child down to the lowest layer whose data is copied (QEMU's `bottom`,
   * inclusive); every layer when absent.
   */
  bottomDepth?: number;
  serialise?: Serialise;
  /** Inserted by an open option (copy-on-read=on), not named in a spec: tools show the node below. */
  implicit?: boolean;
}

/** Most bytes copied through one bounce buffer; longer stretches are copied in turn. */
const COPY_CHUNK = 4 * 1024 * 1024;

/**
 * The copy-on-read filter (QEMU's `copy-on-read` driver and `copy-on-read=on`): a read of a
 * range the top image does not hold reads it from the backing chain, writes it into the top image
 * in whole clusters (all-zero clusters as zero writes, so the top stays compact), and returns it.
 * Writes are unchanged, but they register with this filter's own request tracker, so a guest
 * write never lands between a copy's read of the backing data and its write into the top image
 * (which would bury it under stale data). Everything that must stay in step with the copies has
 * to pass through this filter; writes made to the image below it directly are not serialised.
 */
export class CopyOnReadNode extends FilterNode {
  readonly driver = 'copy-on-read';
  readonly serialise: Serialise;
  readonly implicit: boolean;
  /** The top image's cluster: the unit of copying, zero detection and (by default) serialisation. */
  readonly clusterSize: number;
  private readonly bottomDepth: number | undefined;
  private readonly cor = new RequestTracker();
  /** Writes and copies in progress, and a count bumped as each starts and ends. */
  private mutating = 0;
  private generation = 0;

  constructor(child: BlockNode, opts: CopyOnReadOptions = {}) {
    super(child, opts);
    if (this.readOnly) throw new BlockError('EROFS', 'Block node is read-only', { node: this.nodeName, op: 'open', path: child.filename });
    this.serialise = opts.serialise ?? 'cluster';
    this.implicit = opts.implicit ?? false;
    this.bottomDepth = opts.bottomDepth;
    this.clusterSize = clusterSizeOf(child);
  }

  /** Whether this part of the chain is copied into the top image when read. */
  private copies(e: Extent): boolean {
    if (inTop(e)) return false;
    // Without a bottom, whatever the top lacks is copied (zeros from past the backing's end too).
    if (this.bottomDepth === undefined) return true;
    return e.present && e.depth >= 1 && e.depth <= this.bottomDepth;
  }

  protected override async _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    const end = offset + into.byteLength;
    const cluster = this.clusterSize;
    const start = alignDown(offset, cluster);
    const stop = Math.min(alignUp(end, cluster), this.size);
    // One look at the whole clusters before anything is held. Most reads find what they ask for
    // in the top image already: those need no serialisation at all.
    const generation = this.mutating === 0 ? this.generation : -1;
    const extents = await this.statusOf(start, stop, opts);
    if (!extents.some((e) => e.offset < end && offset < e.offset + e.length && this.copies(e))) return this.child.read(offset, into, opts);
    const req: Span = { start: offset, end };
    // The look stays good for clusters held without waiting if nothing that changes the top image
    // (a write, a copy) ran meanwhile; otherwise they are looked at again once held.
    const stillTrue = (): Extent[] | undefined => (generation === this.generation ? extents : undefined);
    if (this.serialise === 'request') {
      const ticket = this.cor.tryBegin(start, stop, true);
      if (ticket) return this.copyHeld({ start, end: stop }, stillTrue(), req, into, ticket, opts);
      return this.copyHeld({ start, end: stop }, undefined, req, into, await this.cor.begin(start, stop, true), opts);
    }
    const pieces = this.cor.beginPieces(start, stop, cluster);
    const known = stillTrue();
    if (pieces.length === 1 && !pieces[0]!.ready) return this.copyHeld(pieces[0]!, known, req, into, pieces[0]!.ticket, opts);
    // Each piece goes as soon as the requests it overlaps are done. Every piece is waited for,
    // even after one fails, so none still writes into `into` once this has returned.
    const results = await Promise.allSettled(pieces.map(async (p) => {
      if (!p.ready) return this.copyHeld(p, known, req, into, p.ticket, opts);
      await p.ready;
      return this.copyHeld(p, undefined, req, into, p.ticket, opts);
    }));
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  /** The extents of [start, stop) of the image below, tiling it. */
  private async statusOf(start: number, stop: number, opts: IoOptions): Promise<Extent[]> {
    const extents: Extent[] = [];
    for (let pos = start; pos < stop;) {
      const list = await this.child.blockStatusList(pos, stop - pos, opts);
      for (const e of list) extents.push(e);
      const last = list[list.length - 1]!;
      pos = last.offset + last.length;
    }
    return extents;
  }

  /**
   * Copies what `span` needs (whole clusters, held by `ticket`) and fills its part of the request.
   * `known`: extents that are still true for the span, or undefined to ask again.
   */
  private async copyHeld(span: Span, known: Extent[] | undefined, req: Span, into: Uint8Array, ticket: Ticket, opts: IoOptions): Promise<void> {
    try {
      const extents = known ? clip(known, span) : await this.statusOf(span.start, span.end, opts);
      const runs = planCopy(extents, span.start, span.end, this.clusterSize, (e) => this.copies(e));
      const wanted = { start: Math.max(span.start, req.start), end: Math.min(span.end, req.end) };
      // What is not copied (held by the top already, or below the bottom) is read as it is.
      const direct = gaps(wanted, runs).map((g) => this.child.read(g.start, into.subarray(g.start - req.start, g.end - req.start), opts));
      const copied = runs.length === 0 ? undefined : (async () => {
        this.changing(+1);
        try {
          for (const run of runs) for (const c of chunks(run, COPY_CHUNK)) await this.copyChunk(c, run, req, into, opts);
        } finally {
          this.changing(-1);
        }
      })();
      await Promise.all(copied ? [...direct, copied] : direct);
    } finally {
      ticket.release();
    }
  }

  /** Counts a change of the top image starting (+1) or ending (-1): see `_read`. */
  private changing(delta: 1 | -1): void {
    this.mutating += delta;
    this.generation++;
  }

  /** Reads one chunk of a run from below, writes it into the top cluster by cluster, and hands over the requested part. */
  private async copyChunk(chunk: Span, run: CopyRun, req: Span, into: Uint8Array, opts: IoOptions): Promise<void> {
    // A chunk inside the request is read straight into the caller's buffer, which is ours until
    // the read resolves (QEMU bounces because a guest may scribble on its memory at any time).
    const inside = chunk.start >= req.start && chunk.end <= req.end;
    const bounce = inside ? into.subarray(chunk.start - req.start, chunk.end - req.start) : new Uint8Array(chunk.end - chunk.start);
    if (inside) fillGaps(bounce, chunk, run.reads);
    const reads: Promise<void>[] = [];
    for (const r of run.reads) {
      const s = Math.max(r.start, chunk.start);
      const e = Math.min(r.end, chunk.end);
      if (s < e) reads.push(this.child.read(s, bounce.subarray(s - chunk.start, e - chunk.start), opts));
    }
    await Promise.all(reads);
    // Zero detection cluster by cluster: all-zero clusters become zero clusters, not data.
    // Consecutive clusters of a kind go in one request, in ascending order (allocation order
    // then follows the guest offsets, as QEMU's does).
    let runStart = chunk.start;
    let runZero: boolean | undefined;
    for (const c of clusterSpans(chunk.start, chunk.end, this.clusterSize)) {
      const zero = isAllZero(bounce.subarray(c.start - chunk.start, c.end - chunk.start));
      if (runZero !== undefined && zero !== runZero) {
        await this.writeBack(runStart, c.start, runZero, bounce, chunk.start);
        runStart = c.start;
      }
      runZero = zero;
    }
    await this.writeBack(runStart, chunk.end, runZero!, bounce, chunk.start);
    if (inside) return;
    const s = Math.max(chunk.start, req.start);
    const e = Math.min(chunk.end, req.end);
    if (s < e) into.set(bounce.subarray(s - chunk.start, e - chunk.start), s - req.start);
  }

  private writeBack(start: number, end: number, zero: boolean, bounce: Uint8Array, base: number): Promise<void> {
    // No mayUnmap: the zeros must stay in the top image, or the backing would show through again.
    if (zero) return this.child.writeZeroes(start, end - start);
    return this.child.write(start, bounce.subarray(start - base, end - base));
  }

  // Writes register with the copy-on-read tracker, so they wait for copies of the clusters they
  // touch, and copies that start later wait for them.

  protected override _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    return this.guarded(offset, offset + data.byteLength, () => this.child.write(offset, data, opts));
  }

  protected override _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    return this.guarded(offset, offset + length, () => this.child.writeZeroes(offset, length, opts));
  }

  protected override _discard(offset: number, length: number, opts: IoOptions): Promise<void> {
    return this.guarded(offset, offset + length, () => this.child.discard(offset, length, opts));
  }

  private async guarded(start: number, end: number, op: () => Promise<void>): Promise<void> {
    const ticket = this.cor.tryBegin(start, end, false) ?? (await this.cor.begin(start, end, false));
    this.changing(+1);
    try {
      await op();
    } finally {
      this.changing(-1);
      ticket.release();
    }
  }
}

/**
 * The node a user opened: the one below a copy-on-read filter that an open option inserted
 * (QEMU 7.2's copy-on-read=on adds no node, so tools describe the image itself).
 */
export function namedNode(node: BlockNode): BlockNode {
  return node instanceof CopyOnReadNode && node.implicit ? node.child : node;
}

/** Zeroes the parts of `buf` (holding `chunk`) that no read fills: they read as zeros below. */
function fillGaps(buf: Uint8Array, chunk: Span, reads: readonly Span[]): void {
  for (const g of gaps(chunk, reads)) buf.fill(0, g.start - chunk.start, g.end - chunk.start);
}

/**
 * The top image's cluster size (QEMU's bdrv_get_cluster_size): what its format says, through any
 * filters, or the request alignment for formats without clusters.
 */
function clusterSizeOf(node: BlockNode): number {
  let n: BlockNode = node;
  while (n instanceof FilterNode) n = n.child;
  const size = n.imageInfo()['cluster-size'];
  return typeof size === 'number' && Number.isSafeInteger(size) && size > 0 ? size : Math.max(1, node.limits.requestAlignment);
}
