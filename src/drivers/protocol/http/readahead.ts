/** Fetches `into.byteLength` bytes at `offset` from the server into `into`. */
export type Fetch = (offset: number, into: Uint8Array) => Promise<void>;

interface Buffered {
  start: number;
  end: number;
  bytes: Promise<Uint8Array>;
  settled: boolean;
  lastUse: number;
}

/** Buffers kept, as QEMU's curl keeps one per handle (CURL_NUM_STATES). */
const SLOTS = 8;

/**
 * The readahead of QEMU's curl driver: a small read fetches `readahead` bytes from its offset and
 * keeps them, so the small sequential reads of a format driver (headers, tables, clusters) cost
 * one round trip per `readahead` instead of one each. A read inside a range still in flight waits
 * for it rather than asking again. Unlike QEMU, which fetches request + readahead every time, a
 * read of `readahead` or more fetches just itself, straight into the caller's buffer: large
 * sequential reads (convert) then move each byte once.
 */
export class ReadaheadCache {
  private readonly buffers: Buffered[] = [];
  private clock = 0;

  constructor(private readonly fetch: Fetch, private readonly readahead: number, private readonly length: number) {}

  /** Reads [offset, offset + into.length), which lies within the file. */
  async read(offset: number, into: Uint8Array): Promise<void> {
    const end = offset + into.byteLength;
    const hit = this.buffers.find((b) => b.start <= offset && end <= b.end);
    if (hit) {
      hit.lastUse = ++this.clock;
      const bytes = await hit.bytes;
      into.set(bytes.subarray(offset - hit.start, end - hit.start));
      return;
    }
    const span = Math.min(Math.max(into.byteLength, this.readahead), this.length - offset);
    if (span <= into.byteLength) return this.fetch(offset, into);
    const buf = new Uint8Array(span);
    const entry: Buffered = { start: offset, end: offset + span, bytes: this.fetch(offset, buf).then(() => buf), settled: false, lastUse: ++this.clock };
    this.keep(entry);
    entry.bytes.then(() => void (entry.settled = true), () => this.forget(entry));
    const bytes = await entry.bytes;
    into.set(bytes.subarray(0, into.byteLength));
  }

  /** Empties the cache (the node closes). */
  clear(): void {
    this.buffers.length = 0;
  }

  private keep(entry: Buffered): void {
    if (this.buffers.length >= SLOTS) {
      // The least recently used buffer that has arrived makes room; one still in flight has waiters.
      let victim = -1;
      for (let i = 0; i < this.buffers.length; i++) {
        const b = this.buffers[i]!;
        if (b.settled && (victim < 0 || b.lastUse < this.buffers[victim]!.lastUse)) victim = i;
      }
      if (victim < 0) return;
      this.buffers.splice(victim, 1);
    }
    this.buffers.push(entry);
  }

  private forget(entry: Buffered): void {
    const i = this.buffers.indexOf(entry);
    if (i >= 0) this.buffers.splice(i, 1);
  }
}
