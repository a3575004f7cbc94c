import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import type { Extent } from '../core/types.js';
import { isAllZero } from '../core/zero-detect.js';
import { ExtentCursor } from './extent-cursor.js';
import { Job, type JobOptions } from './job.js';

/**
 * The copying half of a safe qemu-img rebase: before an image's backing link changes, every
 * range the image does not allocate itself and where the old and the new backing chain read
 * differently gets the old chain's bytes written into the image, so that what the image reads
 * stays the same once the link points elsewhere (the caller changes it afterwards). A crash
 * at any point is harmless: the image reads the same throughout.
 *
 * The image's block status is walked window by window (never the whole map up front); ranges
 * both chains know to be zero are not read.
 */
export interface RebaseCopyOptions {
  /** The image, open with its current backing chain. */
  image: BlockNode;
  /** What the image will read through after the change; undefined for no backing file (zeros). */
  newBacking: BlockNode | undefined;
  /**
   * The new backing file is the image's own backing chain member this many hops down (1: its
   * backing file): what the chain serves from there or deeper reads the same either way.
   */
  sharedDepth?: number | undefined;
  /** Called between requests: waits while paused, throws once cancelled. */
  checkpoint?: () => Promise<void>;
  /** Bytes of the image dealt with. */
  onProgress?: (bytes: number) => void;
}

/** qemu-img's IO_BUF_SIZE: the most compared at once. */
const CHUNK = 2 * 1024 * 1024;

export async function rebaseCopy(opts: RebaseCopyOptions): Promise<void> {
  const { image } = opts;
  const size = image.size;
  const cursor = new ExtentCursor(image, 0, size);
  const fresh = opts.newBacking ? new ExtentCursor(opts.newBacking, 0, opts.newBacking.size) : undefined;
  const buffers = { old: new Uint8Array(Math.min(CHUNK, size)), new: new Uint8Array(Math.min(CHUNK, size)) };
  // Ranges to compare are gathered into one region while they follow each other, so that a
  // cluster split between two extents of the backing chain is compared (and written) whole.
  let region: [number, number] | undefined;
  const flushRegion = async () => {
    if (region) await reconcile(opts, region[0], region[1], buffers);
    region = undefined;
  };
  for (let pos = 0; pos < size;) {
    await opts.checkpoint?.();
    const e = await status(cursor, pos, 'Could not read the image\'s block status');
    const end = Math.min(e.offset + e.length, size);
    if (await mayDiffer(opts, e, pos, end, fresh)) {
      if (region && region[1] === pos) region[1] = end;
      else {
        await flushRegion();
        region = [pos, end];
      }
      if (region[1] - region[0] >= CHUNK) await flushRegion();
    } else {
      await flushRegion();
    }
    opts.onProgress?.(end - pos);
    pos = end;
  }
  await flushRegion();
  await image.flush();
}

/**
 * Whether [pos, end) (one extent `e` of the image) may read differently through the new chain:
 * not if the image allocates it, not if the shared part of the chain serves it, not if both
 * chains know it to be zero.
 */
async function mayDiffer(opts: RebaseCopyOptions, e: Extent, pos: number, end: number, fresh: ExtentCursor | undefined): Promise<boolean> {
  if (e.depth === 0 && e.present) return false;
  if (opts.sharedDepth !== undefined && e.depth >= opts.sharedDepth) return false;
  if (!e.zero) return true;
  const limit = Math.min(end, opts.newBacking?.size ?? 0);
  for (let q = pos; q < limit;) {
    const n = await status(fresh!, q, 'Could not read the new backing file\'s block status');
    if (!n.zero) return true;
    q = n.offset + n.length;
  }
  return false;
}

/** Reads [start, end) through both chains and writes the old chain's bytes where they differ. */
async function reconcile(opts: RebaseCopyOptions, start: number, end: number, buffers: { old: Uint8Array; new: Uint8Array }): Promise<void> {
  const { image, newBacking } = opts;
  // Compared and written in the image's own allocation units, so a write never splits one.
  const unit = Math.max(image.limits.zeroAlignment, image.limits.requestAlignment, 512);
  for (let pos = start; pos < end;) {
    const n = Math.min(CHUNK - (pos % CHUNK), end - pos);
    const old = buffers.old.subarray(0, n);
    const fresh = buffers.new.subarray(0, n);
    // The image does not allocate the range: reading it reads the old chain.
    await io(() => image.read(pos, old), 'error while reading from old backing file');
    const inNew = Math.max(0, Math.min(n, (newBacking?.size ?? 0) - pos));
    if (inNew > 0) await io(() => newBacking!.read(pos, fresh.subarray(0, inNew)), 'error while reading from new backing file');
    fresh.fill(0, inNew);
    for (let at = 0; at < n;) {
      const blockEnd = Math.min(n, Math.floor((pos + at) / unit) * unit + unit - pos);
      if (Buffer.compare(old.subarray(at, blockEnd), fresh.subarray(at, blockEnd)) === 0) {
        at = blockEnd;
        continue;
      }
      // A run of differing blocks, written in one request.
      let runEnd = blockEnd;
      while (runEnd < n) {
        const next = Math.min(n, runEnd + unit);
        if (Buffer.compare(old.subarray(runEnd, next), fresh.subarray(runEnd, next)) === 0) break;
        runEnd = next;
      }
      const data = old.subarray(at, runEnd);
      const offset = pos + at;
      await io(() => (isAllZero(data) ? image.writeZeroes(offset, data.byteLength) : image.write(offset, data)), 'Error while writing to COW image');
      at = runEnd;
    }
    pos += n;
  }
}

async function status(cursor: ExtentCursor, pos: number, what: string): Promise<Extent> {
  return io(() => cursor.at(pos), what);
}

/** qemu-img's words for a failed step, with the cause's. */
async function io<T>(step: () => Promise<T>, what: string): Promise<T> {
  try {
    return await step();
  } catch (err) {
    const e = err as BlockError;
    throw new BlockError(e.code ?? 'EIO', `${what}: ${e.message}`, { op: 'rebase' }, { cause: err });
  }
}

/** The copy as a job: progress in bytes of the image, pause and cancel between requests. */
export class RebaseJob extends Job<void> {
  constructor(private readonly opts: Omit<RebaseCopyOptions, 'checkpoint' | 'onProgress'> & JobOptions) {
    super(opts);
  }

  protected async run(): Promise<void> {
    this.setTotal(this.opts.image.size);
    await rebaseCopy({ ...this.opts, checkpoint: () => this.checkpoint(), onProgress: (n) => this.addProgress(n) });
  }
}
