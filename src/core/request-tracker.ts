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
