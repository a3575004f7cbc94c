/**
 * The bytes a client has sent and the server has not consumed yet, as the socket delivered them.
 * Taking bytes that lie inside one received chunk returns a view of it (WRITE payloads reach the
 * image without a copy); only a run that spans chunks is copied into a new buffer.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private head = 0;
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** The next `n` bytes (the caller has checked `length >= n`). */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError(`take(${n}) with ${this.total} bytes queued`);
    const first = this.chunks[0];
    if (n === 0 || first === undefined) return Buffer.alloc(0);
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.consume(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0]!;
      const part = Math.min(chunk.length - this.head, n - filled);
      chunk.copy(out, filled, this.head, this.head + part);
      filled += part;
      this.consume(part);
    }
    return out;
  }

  /**
   * The chunk that holds the next `n` bytes in one piece, starting at `headOffset`; they stay
   * queued. Lets a fixed header be decoded in place, copied only when it straddles two chunks.
   */
  contiguous(n: number): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length - this.head >= n) return first;
    const joined = this.take(n);
    // The joined bytes go back in front, so the offset into the chunk after them must go.
    if (this.head > 0) this.chunks[0] = this.chunks[0]!.subarray(this.head);
    this.chunks.unshift(joined);
    this.head = 0;
    this.total += n;
    return joined;
  }

  /** Where the next byte lies in the chunk `contiguous` returns. */
  get headOffset(): number {
    return this.head;
  }

  /** Drops the next `n` bytes (at most what is queued); returns how many were dropped. */
  skip(n: number): number {
    const drop = Math.min(n, this.total);
    for (let left = drop; left > 0;) {
      const part = Math.min(this.chunks[0]!.length - this.head, left);
      this.consume(part);
      left -= part;
    }
    return drop;
  }

  /** Everything queued, emptying the queue. */
  drain(): Buffer {
    return this.take(this.total);
  }

  private consume(n: number): void {
    this.head += n;
    this.total -= n;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
