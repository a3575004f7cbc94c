import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import type { Extent } from '../core/types.js';

/**
 * What one copy request does to the target (qemu-img convert's BLK_DATA / BLK_ZERO /
 * BLK_BACKING_FILE): read and write the bytes, make the range read as zeros, or leave it to the
 * target's backing file.
 */
export type CopyKind = 'data' | 'zero' | 'backing';

export interface CopyRequest {
  /** Position in the plan: in-order writing follows it. */
  seq: number;
  /** Range in the target (the sources laid end to end). */
  offset: number;
  length: number;
  kind: CopyKind;
  /** Where a data request reads from. */
  source: BlockNode;
  sourceOffset: number;
  /**
   * Where a data request's bytes lie in a host file, when all of them lie there in one piece
   * (block status's hostFile and hostOffset; never for compressed clusters): a copy may then
   * move them in the kernel (host-copy.ts).
   */
  host?: HostRange;
}

/** The start of a run of bytes stored as they are in a host file (by its node's filename). */
export interface HostRange {
  file: string;
  offset: number;
}

/** A piece of a pending run whose bytes are contiguous in one host file (file undefined: not known to be). */
interface HostPiece {
  start: number;
  end: number;
  host: HostRange | undefined;
}

export interface PlanOptions {
  /** Copied one after another into one target. */
  sources: readonly BlockNode[];
  /** Largest data request (the copy buffer); data requests end on multiples of it. */
  maxData: number;
  /** Largest zero or backing request: big enough to be cheap, small enough for progress and cancel. */
  maxZero?: number;
  /**
   * The target is an overlay whose backing file holds what the sources' backing files hold
   * (`convert -B`): ranges the sources do not allocate themselves are left to it. `size` is
   * that backing file's size; zeros past it need no write either.
   */
  targetBacking?: { size: number };
}

export const DEFAULT_MAX_ZERO = 1024 ** 3;

/**
 * Walks the sources' block status window by window (extentLists batches, never the whole image
 * up front) and yields the copy requests in target order: runs of one kind merged across
 * extents, data cut at buffer-size boundaries so that requests stay aligned in the target.
 */
export async function* planCopy(opts: PlanOptions): AsyncGenerator<CopyRequest> {
  const maxZero = opts.maxZero ?? DEFAULT_MAX_ZERO;
  let seq = 0;
  let base = 0;
  for (const source of opts.sources) {
    let pending: { kind: CopyKind; start: number; end: number; hosts: HostPiece[] } | undefined;
    // Emits the whole pieces of the pending run (all of it when `all`), keeping the remainder.
    const emit = function* (all: boolean): Generator<CopyRequest> {
      while (pending && pending.start < pending.end) {
        const limit = pending.kind === 'data' ? opts.maxData : maxZero;
        const boundary = Math.floor((base + pending.start + limit) / limit) * limit - base;
        if (boundary > pending.end && !all) return;
        const end = Math.min(boundary, pending.end);
        const req: CopyRequest = { seq: seq++, offset: base + pending.start, length: end - pending.start, kind: pending.kind, source, sourceOffset: pending.start };
        const host = hostOf(pending.hosts, pending.start, end);
        if (host) req.host = host;
        yield req;
        pending.start = end;
      }
      pending = undefined;
    };
    for await (const list of statusLists(source, base)) {
      for (const e of list) {
        for (const [kind, start, end] of classify(e, base, opts.targetBacking)) {
          if (pending && (pending.kind !== kind || pending.end !== start)) yield* emit(true);
          if (pending) pending.end = end;
          else pending = { kind, start, end, hosts: [] };
          if (kind === 'data') addHost(pending.hosts, e, start, end);
          yield* emit(false);
        }
      }
    }
    yield* emit(true);
    base += source.size;
  }
}

/** Notes where [start, end) of extent `e` lies in its host file, merged with the piece before when contiguous. */
function addHost(pieces: HostPiece[], e: Extent, start: number, end: number): void {
  const host = e.hostOffset !== undefined && e.hostFile !== undefined && !e.compressed ? { file: e.hostFile, offset: e.hostOffset + start - e.offset } : undefined;
  const last = pieces[pieces.length - 1];
  if (last && last.end === start && last.host && host && last.host.file === host.file && last.host.offset + (start - last.start) === host.offset) {
    last.end = end;
  } else {
    pieces.push({ start, end, host });
  }
}

/** Where [start, end) lies in one host file, if it does; drops the pieces before `start`. */
function hostOf(pieces: HostPiece[], start: number, end: number): HostRange | undefined {
  while (pieces.length > 0 && pieces[0]!.end <= start) pieces.shift();
  const p = pieces[0];
  if (!p?.host || p.start > start || p.end < end) return undefined;
  return { file: p.host.file, offset: p.host.offset + start - p.start };
}

async function* statusLists(source: BlockNode, base: number): AsyncIterable<Extent[]> {
  const it = source.extentLists(0, source.size)[Symbol.asyncIterator]();
  let pos = 0;
  for (;;) {
    let next: IteratorResult<Extent[]>;
    try {
      next = await it.next();
    } catch (err) {
      const e = err as BlockError;
      throw new BlockError(e.code ?? 'EIO', `error while reading block status at offset ${base + pos}: ${e.message}`,
        { op: 'block-status', offset: base + pos }, { cause: err });
    }
    if (next.done) return;
    yield next.value;
    const last = next.value[next.value.length - 1]!;
    pos = last.offset + last.length;
  }
}

/**
 * The kind of each part of one source extent (qemu-img convert_iteration_sectors): known zeros,
 * data, or, for an overlay target, what the source leaves to its backing file. Zeros past the
 * end of the target's backing file read as zeros there already.
 */
function classify(e: Extent, base: number, backing: PlanOptions['targetBacking']): [CopyKind, number, number][] {
  const start = e.offset;
  const end = e.offset + e.length;
  if (!backing) return [[e.zero ? 'zero' : 'data', start, end]];
  // Anything below the source's top layer is in the source's backing chain, which -B promises
  // the target's backing file holds too.
  if (e.depth > 0) return [['backing', start, end]];
  if (!e.zero) return [[e.data ? 'data' : 'backing', start, end]];
  const split = Math.min(end, Math.max(start, backing.size - base));
  const parts: [CopyKind, number, number][] = [];
  if (start < split) parts.push(['zero', start, split]);
  if (split < end) parts.push(['backing', split, end]);
  return parts;
}
