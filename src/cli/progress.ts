import type { Writable } from 'node:stream';
import { formatFixed } from './sizes.js';

/**
 * qemu-img's `-p` progress (util/qemu-progress.c): "    (12.34/100%)\r" whenever the figure
 * has moved by more than `minSkip` points, and at 0 and 100; a newline at the end. Scripts that
 * drive qemu-img parse this line, so it keeps qemu-img's shape rather than drawing a bar.
 */
export class QemuProgress {
  private current = 0;
  private lastPrint = 0;

  /** `out` undefined: progress is off (no -p, or -q), and nothing is printed. */
  constructor(private readonly out: Writable | undefined, private readonly minSkip: number) {}

  /** qemu_progress_print: with max 0, `delta` is the new figure; else it adds delta% of max. */
  print(delta: number, max: number): void {
    const current = max === 0 ? delta : this.current + (delta / 100) * max;
    if (current > this.lastPrint + this.minSkip || current < this.lastPrint - this.minSkip || current === 100 || current === 0) {
      this.lastPrint = this.current;
      this.current = current;
      this.out?.write(`    (${formatFixed(current, 2)}/100%)\r`);
    }
  }

  end(): void {
    this.out?.write('\n');
  }
}
