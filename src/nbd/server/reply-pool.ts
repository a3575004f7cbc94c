/**
 * Buffers for READ replies (header and data in one buffer), reused once the socket has sent them.
 * A fresh 4 KiB buffer per read cost more than the read itself in the profile: allocation outside
 * Node's small-buffer slab plus the garbage collection after it. Capacities are powers of two
 * (plus room for the longest reply header), so a buffer serves any request of its class.
 *
 * A buffer comes back only through `release`, which the connection calls from the socket's write
 * callback: by then the kernel has the bytes. A buffer that is never released (its read failed,
 * its client vanished) is simply left to the garbage collector.
 */

/** Room in front of the data for the longest header: a structured OFFSET_DATA chunk (20 + 8). */
export const REPLY_HEADROOM = 32;
/** Smallest class: replies shorter than this come from Node's own slab just as cheaply. */
const MIN_CLASS = 12;
/** Larger reads are rare enough (and their copy costly enough) that pooling does not pay. */
const MAX_CLASS = 22;
/**
 * Free bytes kept per class, so a burst of large reads does not pin memory for ever; enough for
 * sixteen 1 MiB reads in flight (a client reading 8 deep keeps 8 buffers turning over).
 */
const FREE_BYTES_PER_CLASS = 16 * 1024 * 1024 + 16 * REPLY_HEADROOM;

export class ReplyPool {
  /** Free buffers by class (log2 of the data capacity). */
  private readonly free: Buffer[][] = [];
  /** Buffers this pool made: release ignores any other. */
  private readonly made = new WeakSet<ArrayBuffer>();

  /**
   * A buffer of exactly `size` bytes with room for at least `dataLength` bytes after the header;
   * from the pool when the class is pooled, else newly allocated.
   */
  acquire(size: number, dataLength: number): Buffer {
    const cls = classOf(dataLength);
    if (cls > MAX_CLASS) return Buffer.allocUnsafe(size);
    const list = this.free[cls];
    const whole = list?.pop() ?? this.make(cls);
    return size === whole.length ? whole : whole.subarray(0, size);
  }

  /** Whether `b` came from `acquire` here (only such buffers are worth a write callback). */
  owns(b: Buffer): boolean {
    return b.byteOffset === 0 && this.made.has(b.buffer as ArrayBuffer);
  }

  /** Returns a sent buffer; buffers from elsewhere are ignored. */
  release(b: Buffer): void {
    if (!this.owns(b)) return;
    const capacity = b.buffer.byteLength;
    const cls = Math.log2(capacity - REPLY_HEADROOM);
    const list = (this.free[cls] ??= []);
    if ((list.length + 1) * capacity > FREE_BYTES_PER_CLASS) return;
    list.push(Buffer.from(b.buffer, 0, capacity));
  }

  private make(cls: number): Buffer {
    const b = Buffer.allocUnsafeSlow(2 ** cls + REPLY_HEADROOM);
    this.made.add(b.buffer as ArrayBuffer);
    return b;
  }
}

function classOf(length: number): number {
  return length <= 2 ** MIN_CLASS ? MIN_CLASS : 32 - Math.clz32(length - 1);
}

/** One pool for the process: a buffer sent on one connection may serve the next on another. */
export const replyPool = new ReplyPool();
