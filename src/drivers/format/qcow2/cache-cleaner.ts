/** Node's timers fire at most this many milliseconds ahead (longer delays become 1 ms). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Runs `clean` every `seconds` (QEMU's cache-clean-interval timer), on a timer that does not
 * keep the process alive: an image left open must not stop a program from exiting. Intervals
 * beyond what one Node timer can wait are waited for in steps.
 */
export class CacheCleaner {
  private timer: NodeJS.Timeout | undefined;
  private due = 0;

  constructor(private readonly seconds: number, private readonly clean: () => void) {
    if (seconds > 0) this.schedule(Date.now() + seconds * 1000);
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(due: number): void {
    this.due = due;
    this.timer = setTimeout(() => this.fire(), Math.min(MAX_TIMER_MS, Math.max(0, due - Date.now())));
    this.timer.unref();
  }

  private fire(): void {
    if (Date.now() < this.due) return this.schedule(this.due);
    this.clean();
    this.schedule(Date.now() + this.seconds * 1000);
  }
}
