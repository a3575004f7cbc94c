/**
 * A bounded cache of equal-sized metadata tables (L2 slices, refcount blocks) keyed by host
 * offset, in the manner of QEMU's Qcow2Cache:
 *
 * - Least recently used entries go first (a Map iterates in insertion order, and every use
 *   re-inserts). A miss on a full cache reads into the buffer of the entry it evicts, so a
 *   workload that misses all the time allocates nothing: evicted buffers never pile up waiting
 *   for the garbage collector.
 * - Dirty entries (changed, not yet written) and entries in use are never evicted, so the cache
 *   may run over its size until the owner writes them back; trim() then brings it back.
 * - Buffers are lent, not given: `use` runs a callback while the entry cannot be evicted, and a
 *   dirty entry's buffer stays put until it is written. Holding a clean buffer across an await
 *   would be a bug: another miss may refill it with a different table.
 * - Concurrent misses on one table share one load.
 */
interface Entry {
  buf: Uint8Array;
  dirty: boolean;
  /** Callers between acquiring and releasing the entry. */
  pins: number;
  /** The cache's use counter at the last use (for cleanUnused). */
  lastUse: number;
}

interface Loading extends Entry {
  ready: Promise<void>;
  /** The generation the load started in: a load that outlives clear() is not cached. */
  generation: number;
}

export class TableCache {
  private readonly entries = new Map<number, Entry>();
  private readonly loading = new Map<number, Loading>();
  private uses = 0;
  /** `uses` at the previous cleanUnused() pass. */
  private cleanMark = 0;
  private generation = 0;
  private dirtyEntries = 0;

  constructor(
    /** Bytes per entry. */
    readonly entrySize: number,
    /** Entries kept when none is dirty or in use. */
    readonly capacity: number,
    /** Fills `into` with the table at `offset` from disk. */
    private readonly load: (offset: number, into: Uint8Array) => Promise<void>,
  ) {}

  /**
   * The cached table at `offset`, marked used, without waiting; undefined on a miss. The buffer
   * is valid until the caller's next await.
   */
  peek(offset: number): Uint8Array | undefined {
    const e = this.entries.get(offset);
    if (!e) return undefined;
    this.touch(offset, e);
    return e.buf;
  }

  /** Runs `fn` over the table at `offset` (loading it on a miss) while it cannot be evicted. */
  async use<T>(offset: number, fn: (table: Uint8Array) => T): Promise<T> {
    const hit = this.entries.get(offset);
    if (hit) {
      this.touch(offset, hit);
      return fn(hit.buf);
    }
    const e = this.loading.get(offset) ?? this.startLoad(offset);
    e.pins++;
    try {
      await e.ready;
      e.lastUse = ++this.uses;
      return fn(e.buf);
    } finally {
      e.pins--;
    }
  }

  /**
   * The table at `offset`, marked dirty: it stays in memory, at this buffer, until the owner
   * writes it and calls markClean. The caller may change it across awaits.
   */
  async modify(offset: number): Promise<Uint8Array> {
    const hit = this.entries.get(offset);
    if (hit) {
      this.touch(offset, hit);
      this.setDirty(hit);
      return hit.buf;
    }
    const e = this.loading.get(offset) ?? this.startLoad(offset);
    e.pins++;
    try {
      await e.ready;
    } finally {
      e.pins--;
    }
    // Still pinned in effect: nothing ran between the unpin and here. A table created while
    // this one loaded is newer than what was read.
    const current = this.entries.get(offset);
    if (current) {
      this.touch(offset, current);
      this.setDirty(current);
      return current.buf;
    }
    e.lastUse = ++this.uses;
    this.entries.set(offset, e);
    this.setDirty(e);
    return e.buf;
  }

  /** A new table at `offset`, all zeros and dirty (it has never been on disk). */
  create(offset: number): Uint8Array {
    const old = this.entries.get(offset);
    if (old) this.remove(offset, old);
    const buf = this.reserve();
    buf.fill(0);
    const e: Entry = { buf, dirty: false, pins: 0, lastUse: ++this.uses };
    this.entries.set(offset, e);
    this.setDirty(e);
    return buf;
  }

  /** The owner wrote the table at `offset`: it may be evicted again. */
  markClean(offset: number): void {
    const e = this.entries.get(offset);
    if (e?.dirty) {
      e.dirty = false;
      this.dirtyEntries--;
    }
  }

  /** The dirty tables, by offset, ascending (the order they are best written in). */
  dirty(): [number, Uint8Array][] {
    const out: [number, Uint8Array][] = [];
    for (const [offset, e] of this.entries) if (e.dirty) out.push([offset, e.buf]);
    return out.sort((a, b) => a[0] - b[0]);
  }

  get dirtyCount(): number {
    return this.dirtyEntries;
  }

  /** Entries held now (may exceed capacity while many are dirty). */
  get size(): number {
    return this.entries.size;
  }

  /** Evicts clean, unused entries past the capacity (after a writeback). */
  trim(): void {
    for (const [offset, e] of this.entries) {
      if (this.entries.size <= this.capacity) return;
      if (!e.dirty && e.pins === 0) this.remove(offset, e);
    }
  }

  /** Drops the table at `offset` if it is clean (someone changed it on disk behind the cache). */
  drop(offset: number): void {
    const e = this.entries.get(offset);
    if (e && !e.dirty && e.pins === 0) this.remove(offset, e);
    // A load in flight would bring back what is on disk now or before: keep it out.
    const l = this.loading.get(offset);
    if (l) l.generation = -1;
  }

  /**
   * QEMU's qcow2_cache_clean_unused: drops the clean entries nobody used since the previous
   * pass, freeing their memory (a timer calls this every cache-clean-interval). Returns how
   * many were dropped.
   */
  cleanUnused(): number {
    let dropped = 0;
    for (const [offset, e] of this.entries) {
      if (!e.dirty && e.pins === 0 && e.lastUse <= this.cleanMark) {
        this.entries.delete(offset);
        dropped++;
      }
    }
    this.cleanMark = this.uses;
    return dropped;
  }

  /** Drops every clean entry; loads in flight are not cached when they finish. */
  clear(): void {
    this.generation++;
    for (const [offset, e] of this.entries) if (!e.dirty && e.pins === 0) this.entries.delete(offset);
  }

  private setDirty(e: Entry): void {
    if (!e.dirty) {
      e.dirty = true;
      this.dirtyEntries++;
    }
  }

  private touch(offset: number, e: Entry): void {
    e.lastUse = ++this.uses;
    this.entries.delete(offset);
    this.entries.set(offset, e);
  }

  private remove(offset: number, e: Entry): void {
    if (e.dirty) this.dirtyEntries--;
    this.entries.delete(offset);
  }

  /** A buffer for a new entry: the least recently used clean one's, when the cache is full. */
  private reserve(): Uint8Array {
    if (this.entries.size + this.loading.size >= this.capacity) {
      for (const [offset, e] of this.entries) {
        if (!e.dirty && e.pins === 0) {
          this.entries.delete(offset);
          return e.buf;
        }
      }
    }
    return new Uint8Array(this.entrySize);
  }

  private startLoad(offset: number): Loading {
    const e = { buf: this.reserve(), dirty: false, pins: 0, lastUse: 0, generation: this.generation } as Loading;
    e.ready = this.load(offset, e.buf).then(
      () => {
        this.loading.delete(offset);
        // Another writer may have created the table meanwhile; what it holds is newer.
        if (e.generation === this.generation && !this.entries.has(offset)) this.entries.set(offset, e);
      },
      (err: unknown) => {
        this.loading.delete(offset);
        throw err;
      },
    );
    this.loading.set(offset, e);
    return e;
  }
}
