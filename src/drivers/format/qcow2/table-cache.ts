/**
 * A bounded LRU of metadata tables (L2 tables, refcount blocks) keyed by host offset. Concurrent
 * requests for a table that is being loaded share the one load. Map iteration order is insertion
 * order, so re-inserting on every hit keeps the least recently used entry first.
 */
export class TableCache {
  private readonly tables = new Map<number, Uint8Array>();
  private readonly loading = new Map<number, Promise<Uint8Array>>();
  private bytes = 0;

  constructor(
    private readonly maxBytes: number,
    private readonly load: (offset: number) => Promise<Uint8Array>,
  ) {}

  async get(offset: number): Promise<Uint8Array> {
    const hit = this.tables.get(offset);
    if (hit) {
      this.tables.delete(offset);
      this.tables.set(offset, hit);
      return hit;
    }
    let pending = this.loading.get(offset);
    if (!pending) {
      pending = this.load(offset).then(
        (table) => {
          this.loading.delete(offset);
          this.put(offset, table);
          return table;
        },
        (err) => {
          this.loading.delete(offset);
          throw err;
        },
      );
      this.loading.set(offset, pending);
    }
    return pending;
  }

  /** Inserts or replaces a table (after a write); evicts the least recently used beyond the bound. */
  put(offset: number, table: Uint8Array): void {
    const old = this.tables.get(offset);
    if (old) {
      this.bytes -= old.byteLength;
      this.tables.delete(offset);
    }
    this.tables.set(offset, table);
    this.bytes += table.byteLength;
    for (const [key, t] of this.tables) {
      // Always keep the newest entry, even when one table alone exceeds the bound.
      if (this.bytes <= this.maxBytes || key === offset) break;
      this.tables.delete(key);
      this.bytes -= t.byteLength;
    }
  }

  drop(offset: number): void {
    const old = this.tables.get(offset);
    if (old) {
      this.bytes -= old.byteLength;
      this.tables.delete(offset);
    }
  }

  clear(): void {
    this.tables.clear();
    this.bytes = 0;
  }

  get size(): number {
    return this.bytes;
  }
}
