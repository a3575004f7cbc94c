/**
 * Writes in plan order while reads run ahead (qemu-img convert without -W): the request with
 * sequence number n may write once n-1 has finished writing. `abort()` releases every waiter,
 * so one failure never leaves a request waiting for a turn that will not come.
 */
export class WriteOrder {
  private next = 0;
  private aborted = false;
  private readonly waiters = new Map<number, () => void>();

  /** Resolves true when it is `seq`'s turn, false when the copy was stopped. */
  async turn(seq: number): Promise<boolean> {
    if (seq !== this.next && !this.aborted) await new Promise<void>((resolve) => this.waiters.set(seq, resolve));
    return !this.aborted;
  }

  /** `seq` has finished writing (or had nothing to write): the next one may go. */
  done(seq: number): void {
    this.next = seq + 1;
    const wake = this.waiters.get(this.next);
    this.waiters.delete(this.next);
    wake?.();
  }

  abort(): void {
    this.aborted = true;
    for (const wake of this.waiters.values()) wake();
    this.waiters.clear();
  }
}
