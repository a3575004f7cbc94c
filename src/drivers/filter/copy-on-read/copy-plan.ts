import { alignDown } from '../../../core/limits.js';
import type { Extent } from '../../../core/types.js';

/** A byte range [start, end). */
export interface Span {
  start: number;
  end: number;
}

/** A stretch written into the top image: its bytes, and the parts of it that must be read (the rest reads as zeros). */
export interface CopyRun extends Span {
  reads: Span[];
}

/** True when the top image itself holds this range (data, or a zero cluster). */
export function inTop(e: Extent): boolean {
  return e.depth === 0 && e.present;
}

function push(list: Span[], start: number, end: number): void {
  const last = list[list.length - 1];
  if (last && last.end === start) last.end = end;
  else list.push({ start, end });
}

/**
 * What a copy-on-read of [start, end) (whole clusters of the top image) writes, given where each
 * part lives now. A cluster is copied when any part of it is to be copied (`copies`), and then
 * every part of it that the top image lacks is written, so the top never gets part of a
 * cluster and the image format never has to fill the rest from the backing file again. Parts
 * known to read as zeros are not read at all: reads of zero ranges never touch the backing.
 */
export function planCopy(extents: readonly Extent[], start: number, end: number, cluster: number, copies: (e: Extent) => boolean): CopyRun[] {
  const marked = new Uint8Array(Math.ceil((end - start) / cluster));
  for (const e of extents) {
    if (!copies(e)) continue;
    const first = Math.floor((e.offset - start) / cluster);
    const last = Math.ceil((e.offset + e.length - start) / cluster);
    marked.fill(1, first, last);
  }
  const runs: CopyRun[] = [];
  for (const e of extents) {
    if (inTop(e)) continue;
    const eEnd = e.offset + e.length;
    // The marked clusters this extent touches, as maximal stretches.
    for (let pos = e.offset; pos < eEnd;) {
      const index = Math.floor((pos - start) / cluster);
      const clusterEnd = Math.min(start + (index + 1) * cluster, eEnd);
      if (marked[index]) {
        const last = runs[runs.length - 1];
        const run = last && last.end === pos ? last : (runs.push({ start: pos, end: pos, reads: [] }), runs[runs.length - 1]!);
        run.end = clusterEnd;
        if (!e.zero) push(run.reads, pos, clusterEnd);
      }
      pos = clusterEnd;
    }
  }
  return runs;
}

/** The parts of `extents` (ascending, tiling a range that covers `span`) inside `span`. */
export function clip(extents: readonly Extent[], span: Span): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const s = Math.max(e.offset, span.start);
    const end = Math.min(e.offset + e.length, span.end);
    if (s >= end) continue;
    if (s === e.offset && end === e.offset + e.length) out.push(e);
    else out.push({ ...e, offset: s, length: end - s, ...(e.hostOffset === undefined ? {} : { hostOffset: e.hostOffset + s - e.offset }) });
  }
  return out;
}

/** `span` cut at multiples of `chunk` (counted from `span.start`), for bounded bounce buffers. */
export function* chunks(span: Span, chunk: number): Generator<Span> {
  for (let pos = span.start; pos < span.end; pos += chunk) yield { start: pos, end: Math.min(pos + chunk, span.end) };
}

/** The parts of `outer` that no span of `covered` (ascending, disjoint) covers. */
export function gaps(outer: Span, covered: readonly Span[]): Span[] {
  const out: Span[] = [];
  let pos = outer.start;
  for (const c of covered) {
    if (c.end <= pos) continue;
    if (c.start >= outer.end) break;
    if (c.start > pos) out.push({ start: pos, end: c.start });
    pos = Math.max(pos, c.end);
  }
  if (pos < outer.end) out.push({ start: pos, end: outer.end });
  return out;
}

/** `[start, end)` cut at cluster boundaries (absolute offsets), for zero detection cluster by cluster. */
export function* clusterSpans(start: number, end: number, cluster: number): Generator<Span> {
  for (let pos = start; pos < end;) {
    const next = Math.min(alignDown(pos, cluster) + cluster, end);
    yield { start: pos, end: next };
    pos = next;
  }
}
