import { cloneImage, type ReflinkMode } from './clone-plan.js';
import { copyImage, type CopyOptions } from './copy-engine.js';
import { Job, type JobOptions } from './job.js';

export type ConvertOptions = Omit<CopyOptions, 'checkpoint' | 'onProgress' | 'kernelCopy'> & JobOptions & {
  /**
   * Clone raw → raw on a file system that shares extents (clone-plan.ts), and copy data in the
   * kernel where both ends are files (host-copy.ts); default 'never': neither.
   */
  reflink?: ReflinkMode;
};

/**
 * qemu-img convert as a job: the sources, laid end to end, copied into an opened target by the
 * copy engine. Opening and creating images is the caller's part (the CLI's `convert`).
 */
export class ConvertJob extends Job<void> {
  constructor(private readonly opts: ConvertOptions) {
    super(opts);
  }

  protected async run(): Promise<void> {
    this.setTotal(this.opts.sources.reduce((sum, s) => sum + s.size, 0));
    const hooks = { checkpoint: () => this.checkpoint(), onProgress: (n: number) => this.addProgress(n) };
    if (await cloneImage({ ...this.opts, ...hooks, reflink: this.opts.reflink ?? 'never' })) return;
    // copy_file_range may share extents, which --reflink=never rules out.
    await copyImage({ ...this.opts, ...hooks, kernelCopy: (this.opts.reflink ?? 'never') !== 'never' });
  }
}
