import { setTimeout as sleep } from 'node:timers/promises';

/**
 * A job's speed limit (qemu-img's -r, QMP's `speed`), in bytes per second of data copied. As
 * QEMU's ratelimit does, time is cut into short slices with a byte quota each; a request that
 * finds the quota of its slice spent waits for the next slice. Known zeros cost nothing: they
 * move no data.
 */
export class RateLimit {
  private static readonly SLICE_MS = 100;
  private sliceStart = 0;
  private sliceBytes = 0;

  /** `bytesPerSecond` 0 means no limit. */
  constructor(private readonly bytesPerSecond: number) {}

  get limited(): boolean {
    return this.bytesPerSecond > 0;
  }

  /** Accounts `bytes` about to be copied, waiting first while the current slice is spent. */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    if (!this.limited) return;
    const quota = (this.bytesPerSecond * RateLimit.SLICE_MS) / 1000;
    for (;;) {
      const now = performance.now();
      if (now - this.sliceStart >= RateLimit.SLICE_MS) [this.sliceStart, this.sliceBytes] = [now, 0];
      // A request larger than a slice's quota still goes, alone, at the start of a slice.
      if (this.sliceBytes === 0 || this.sliceBytes + bytes <= quota) {
        this.sliceBytes += bytes;
        // Bytes over the quota are paid for by the slices after this one.
        if (this.sliceBytes > quota) this.sliceStart += (Math.floor(this.sliceBytes / quota) - 1) * RateLimit.SLICE_MS;
        return;
      }
      await sleep(this.sliceStart + RateLimit.SLICE_MS - now, undefined, { signal }).catch(() => undefined);
      if (signal?.aborted) return;
    }
  }
}
