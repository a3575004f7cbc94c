import { alignDown, alignUp } from './limits.js';

/**
 * Tracking of in-flight requests and serialisation of overlapping ones (QEMU's tracked requests).
 *
 * A serialising request (a read-modify-write, a copy-on-read) must not run alongside any request
 * that overlaps its widened range, and no request may run alongside an overlapping serialising
 * one. A new request waits only for conflicting requests registered before it, so waits always
 * point backwards in time and can never form a cycle.
 *
 * Every request passes through here, so the common case is kept cheap: one small object per
 * request, no promise unless someone must wait for it, and no scan of the requests in flight
 * when neither side can conflict (no serialising request anywhere).
 */
export interface Ticket {
  release(): void;
}

/** One piece of a serialising request registered by `beginPieces`. */
export interface Piece {
  readonly start: number;
  readonly end: number;
  readonly ticket: Ticket;
  /** Resolves when the piece may run; undefined when it may run at once. */
  readonly ready: Promise<void> | undefined;
}

const settled = (): void => undefined;

class Entry implements Ticket {
  private waiters: (() => void)[] | undefined;

  constructor(
    private readonly tracker: RequestTracker,
    readonly start: number,
    readonly end: number,
    readonly serialising: boolean,
  ) {}

  /** Resolves when this request completes (made only for those who wait). */
  done(): Promise<void> {
    return new Promise((resolve) => (this.waiters ??= []).push(resolve));
  }

  release(): void {
    if (!this.tracker.remove(this)) return;
    const waiters = this.waiters;
    this.waiters = undefined;
    if (waiters) for (const wake of waiters) wake();
  }
}

export class RequestTracker {
  private readonly active = new Set<Entry>();
  private serialisingCount = 0;

  get size(): number {
    return this.active.size;
  }

  /**
   * Registers [start, end) and waits until no earlier conflicting request is in flight.
   * The caller must call `release()` on the result when the request completes.
   */
  async begin(start: number, end: number, serialising: boolean): Promise<Ticket> {
    let conflicts: Promise<void>[] | undefined;
    if (serialising || this.serialisingCount > 0) {
      for (const other of this.active) {
        if (other.start < end && start < other.end && (serialising || other.serialising)) (conflicts ??= []).push(other.done());
      }
    }
    const entry = new Entry(this, start, end, serialising);
    this.active.add(entry);
    if (serialising) this.serialisingCount++;
    if (conflicts) await Promise.all(conflicts);
    return entry;
  }

  /**
   * Registers [start, end) at once when nothing conflicts with it, sparing the common case a
   * promise; undefined (and nothing registered) when the caller must wait in `begin`.
   */
  tryBegin(start: number, end: number, serialising: boolean): Ticket | undefined {
    if (serialising || this.serialisingCount > 0) {
      for (const other of this.active) {
        if (other.start < end && start < other.end && (serialising || other.serialising)) return undefined;
      }
    }
    const entry = new Entry(this, start, end, serialising);
    this.active.add(entry);
    if (serialising) this.serialisingCount++;
    return entry;
  }

  /**
   * Registers the serialising request [start, end) (from a granule boundary) as pieces that each wait
   * only for the earlier requests overlapping them, rather than as one request that waits for
   * everything overlapping any part of it (QEMU's way). Cuts fall where a conflicting request
   * begins or ends, widened to whole granules, so no granule is split between pieces: a reader
   * whose range partly overlaps a copy-on-read in flight copies the clusters nobody else holds at
   * once and waits only for the shared ones. All pieces are registered before this returns, so
   * the no-cycle argument above holds for each of them.
   */
  beginPieces(start: number, end: number, granule: number): Piece[] {
    let conflicts: Entry[] | undefined;
    for (const other of this.active) if (other.start < end && start < other.end) (conflicts ??= []).push(other);
    if (!conflicts) return [this.piece(start, end, undefined)];
    const cuts = [start, end];
    for (const c of conflicts) {
      // Clamped: the last granule of an image may end short of a multiple of granule.
      if (c.start > start) cuts.push(Math.max(start, alignDown(c.start, granule)));
      if (c.end < end) cuts.push(Math.min(end, alignUp(c.end, granule)));
    }
    cuts.sort((a, b) => a - b);
    const pieces: Piece[] = [];
    for (let i = 1; i < cuts.length; i++) {
      const a = cuts[i - 1]!;
      const b = cuts[i]!;
      if (a === b) continue;
      const waits = conflicts.filter((c) => c.start < b && a < c.end).map((c) => c.done());
      pieces.push(this.piece(a, b, waits.length > 0 ? Promise.all(waits).then(settled) : undefined));
    }
    return pieces;
  }

  private piece(start: number, end: number, ready: Promise<void> | undefined): Piece {
    const ticket = new Entry(this, start, end, true);
    this.active.add(ticket);
    this.serialisingCount++;
    return { start, end, ticket, ready };
  }

  /** @internal Called by a ticket's release(); false when it was released already. */
  remove(entry: Entry): boolean {
    if (!this.active.delete(entry)) return false;
    if (entry.serialising) this.serialisingCount--;
    return true;
  }

  /** Resolves when every request in flight now has completed. */
  async drain(): Promise<void> {
    while (this.active.size > 0) await Promise.all([...this.active].map((e) => e.done()));
  }
}
