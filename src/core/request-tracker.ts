/**
 * Tracking of in-flight requests and serialisation of overlapping ones (QEMU's tracked requests).
 *
 * A serialising request (a read-modify-write, a copy-on-read) must not run alongside any request
 * that overlaps its widened range, and no request may run alongside an overlapping serialising
 * one. A new request waits only for conflicting requests registered before it, so waits always
 * point backwards in time and can never form a cycle.
 */
export interface TrackedRequest {
  readonly start: number;
  readonly end: number;
  readonly serialising: boolean;
  readonly done: Promise<void>;
}

interface Entry extends TrackedRequest {
  finish(): void;
}

export class RequestTracker {
  private readonly active = new Set<Entry>();

  get size(): number {
    return this.active.size;
  }

  /**
   * Registers [start, end) and waits until no earlier conflicting request is in flight.
   * The caller must call `release()` on the result when the request completes.
   */
  async begin(start: number, end: number, serialising: boolean): Promise<{ release(): void }> {
    const conflicts: Promise<void>[] = [];
    for (const other of this.active) {
      if (other.start < end && start < other.end && (serialising || other.serialising)) {
        conflicts.push(other.done);
      }
    }
    let finish!: () => void;
    const done = new Promise<void>((resolve) => (finish = resolve));
    const entry: Entry = { start, end, serialising, done, finish };
    this.active.add(entry);
    if (conflicts.length > 0) await Promise.all(conflicts);
    return {
      release: () => {
        if (this.active.delete(entry)) entry.finish();
      },
    };
  }

  /** Resolves when every request in flight now has completed. */
  async drain(): Promise<void> {
    while (this.active.size > 0) await Promise.all([...this.active].map((e) => e.done));
  }
}
