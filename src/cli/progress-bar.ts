import type { Writable } from 'node:stream';
import { formatFixed } from './sizes.js';

/**
 * -p on a terminal: one line redrawn in place, `[#####-----]  50.00%`, whenever the figure moves
 * by a hundredth of a percent; a newline at the end. Off a terminal, commands print qemu-img's
 * progress lines instead (progress.ts), which scripts parse.
 */
export class ProgressBar {
  private shown = -1;

  constructor(private readonly out: Writable, private readonly width = 40) {}

  print(percent: number): void {
    const p = Math.min(100, Math.max(0, percent));
    const hundredths = Math.floor(p * 100);
    if (hundredths === this.shown) return;
    this.shown = hundredths;
    const filled = Math.round((p / 100) * this.width);
    this.out.write(`\r[${'#'.repeat(filled)}${'-'.repeat(this.width - filled)}] ${formatFixed(p, 2).padStart(6)}%`);
  }

  end(): void {
    if (this.shown >= 0) this.out.write('\n');
  }
}
