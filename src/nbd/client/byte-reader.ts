import type { Duplex } from 'node:stream';

/** Bytes buffered before the socket is paused: the reply loop reads them, so this only smooths bursts. */
const HIGH_WATER = 4 * 1024 * 1024;

/**
 * Exact-length reads from a socket, for a protocol whose every message says how long it is.
 * One reader at a time (the handshake, then the reply loop). When the stream ends or fails, the
 * pending and every later read fail with the reason `onEnd` builds.
 */
export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { need: number; wake: () => void } | undefined;
  private ended: Error | undefined;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered >= HIGH_WATER) this.stream.pause();
    if (this.waiter && this.buffered >= this.waiter.need) this.waiter.wake();
  };
  private readonly onClose = (err?: Error): void => {
    this.ended ??= this.endReason(err instanceof Error ? err : undefined);
    this.waiter?.wake();
  };

  constructor(private readonly stream: Duplex, private readonly endReason: (err?: Error) => Error) {
    stream.on('data', this.onData);
    stream.on('end', this.onClose);
    stream.on('close', this.onClose);
    stream.on('error', this.onClose);
  }

  /** Stops listening (before the socket is handed to TLS); nothing may be left unread. */
  detach(): void {
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onClose);
    this.stream.off('close', this.onClose);
    this.stream.off('error', this.onClose);
  }

  /** Why the stream ended, once it has (reads fail with this). */
  get endedWith(): Error | undefined {
    return this.ended;
  }

  get pendingBytes(): number {
    return this.buffered;
  }

  /** The next `n` bytes, as a buffer of their own. */
  async read(n: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(n);
    await this.readInto(out);
    return out;
  }

  /** Fills `into` with the next bytes, copying straight from the socket's chunks. */
  async readInto(into: Uint8Array): Promise<void> {
    let done = 0;
    while (done < into.byteLength) {
      if (this.buffered === 0) await this.wait(1);
      done += this.take(into.byteLength - done, (chunk) => into.set(chunk, done));
    }
  }

  /** Drops the next `n` bytes without keeping them (payloads of chunks that are refused). */
  async skip(n: number): Promise<void> {
    while (n > 0) {
      if (this.buffered === 0) await this.wait(1);
      n -= this.take(n, () => undefined);
    }
  }

  /** Hands over up to `max` bytes of the first buffered chunk; returns how many. */
  private take(max: number, use: (bytes: Buffer) => void): number {
    const first = this.chunks[0]!;
    const n = Math.min(first.length, max);
    use(n === first.length ? first : first.subarray(0, n));
    if (n === first.length) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    if (this.buffered < HIGH_WATER && this.stream.isPaused()) this.stream.resume();
    return n;
  }

  private wait(need: number): Promise<void> {
    if (this.ended) return Promise.reject(this.ended);
    return new Promise<void>((resolve, reject) => {
      this.waiter = {
        need,
        wake: () => {
          this.waiter = undefined;
          if (this.buffered >= need) resolve();
          else reject(this.ended);
        },
      };
    });
  }
}
