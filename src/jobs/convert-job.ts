import { copyImage, type CopyOptions } from './copy-engine.js';
import { Job, type JobOptions } from './job.js';

export type ConvertOptions = Omit<CopyOptions, 'checkpoint' | 'onProgress'> & JobOptions;

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
    await copyImage({ ...this.opts, checkpoint: () => this.checkpoint(), onProgress: (n) => this.addProgress(n) });
  }
}
