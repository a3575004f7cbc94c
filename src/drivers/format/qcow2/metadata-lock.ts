/**
 * Serialises metadata changes (allocation, L2 and L1 updates, flush, resize, check), as QEMU's
 * s->lock does: each holder runs after the previous one settles, whether it succeeded or not.
 */
export class MetadataLock {
  private tail: Promise<void> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn);
    this.tail = run.then(() => undefined, () => undefined);
    return run;
  }
}
