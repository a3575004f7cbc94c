import type { BlockNode } from '../core/block-node.js';
import { isNotSupported } from '../core/errors.js';
import { AboveBaseView } from './above-base.js';
import { copyImage } from './copy-engine.js';
import { Job, type JobOptions } from './job.js';
import { makeEmpty } from './make-empty.js';
import { RateLimit } from './rate-limit.js';
import { WritebackAhead } from './writeback-ahead.js';

export interface CommitOptions extends JobOptions {
  /**
   * The image whose data goes down, open with its backing chain at least down to the base's
   * overlay (the CLI cuts it there, so that the base can be open for writing on its own).
   */
  top: BlockNode;
  /** How many images from the top down lie above the base (1: the base is the top's backing file). */
  layers: number;
  /** The image the data goes into, open for writing. */
  base: BlockNode;
  /** Leave the top as it is (qemu-img commit -d, and -b); otherwise it is emptied afterwards. */
  keepTop?: boolean;
  /** Bytes per second of data copied (qemu-img commit -r); 0 or absent: no limit. */
  rateLimit?: number;
  /** Requests in flight; default 4. */
  inFlight?: number;
}

/**
 * qemu-img commit as a job: every range the images above the base allocate is written into the
 * base — data as data, explicit zeros and all-zero data as zero writes (zero clusters or holes,
 * never zero-filled clusters) — and then the top is emptied (QEMU's bdrv_make_empty) unless
 * asked to keep it. The base grows first when the top is larger, as QEMU's commit grows it.
 *
 * Cancelled, it stops between requests: the base holds some of the data (each request whole)
 * and the top is untouched, so both images stay consistent and the chain reads as before.
 */
export class CommitJob extends Job<void> {
  constructor(private readonly opts: CommitOptions) {
    super(opts);
  }

  protected async run(): Promise<void> {
    const { top, base, layers } = this.opts;
    this.setTotal(top.size);
    if (base.size < top.size) await grow(base, top.size);
    const view = new AboveBaseView(top, layers, new RateLimit(this.opts.rateLimit ?? 0));
    // The base's writeback starts as the copy goes, so that the flush ending it is short.
    const ahead = new WritebackAhead(base);
    try {
      await copyImage({
        sources: [view],
        target: base,
        targetIsZero: false,
        // What the images above the base leave unallocated stays as the base has it.
        targetBacking: { size: Infinity },
        // Zeros are looked for in whole units of what the base can zero cheaply (a qcow2
        // cluster or subcluster, a file system block), so that a zero block becomes a zero
        // cluster or a hole instead of a partial zero write.
        sparseSize: sparseUnit(base),
        inFlight: this.opts.inFlight ?? 4,
        // Large requests: the fewer trips through the layers per byte, the less a commit costs
        // beside the copying itself (8 MiB measured best against 2 MiB to 16 MiB).
        bufferSize: 8 * 1024 * 1024,
        outOfOrder: true,
        // Not copied in the kernel: into a qcow2 base (clusters allocated for the copy,
        // host-alloc.ts) it measured slower than the copy through memory, 1.55 against 1.44 s
        // and 1.82 against 1.48 s of CPU (BENCHMARKS.md). The view passes the layers' host
        // offsets on for when it pays.
        kernelCopy: false,
        checkpoint: () => this.checkpoint(),
        onProgress: (n) => {
          this.addProgress(n);
          ahead.moved(n);
        },
      });
    } catch (err) {
      // No start may outlive the copy: the caller closes the base's files next.
      await ahead.settle().catch(() => undefined);
      throw err;
    }
    await ahead.settle();
    if (this.opts.keepTop) return;
    await this.checkpoint();
    try {
      await makeEmpty(top);
    } catch (err) {
      // qemu-img commit leaves a top whose format cannot be emptied as it is.
      if (!isNotSupported(err)) throw err;
    }
  }
}

/** The base grown to the top's size; where its own backing file reaches into the new range, that range reads zeros. */
async function grow(base: BlockNode, size: number): Promise<void> {
  const from = base.size;
  await base.resize(size);
  if (base.backing && base.backing.size > from) await base.writeZeroes(from, size - from);
}

/** The zero-detection unit: the base's zero alignment, at least 4 KiB, at most 16 MiB (qemu-img's -S bounds). */
function sparseUnit(base: BlockNode): number {
  const unit = Math.max(4096, base.limits.zeroAlignment);
  return Math.min(2 ** Math.floor(Math.log2(unit)), 16 * 1024 * 1024);
}
