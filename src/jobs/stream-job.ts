import type { BlockNode } from '../core/block-node.js';
import { NotSupportedError } from '../core/errors.js';
import { alignDown } from '../core/limits.js';
import { changeBackingFile } from '../drivers/format/qcow2/backing-link.js';
import { Qcow2Node } from '../drivers/format/qcow2/qcow2-node.js';
import { CopyOnReadNode, type Serialise } from '../drivers/filter/copy-on-read/index.js';
import { Job, type JobOptions } from './job.js';
import { RateLimit } from './rate-limit.js';
import { WritebackAhead } from './writeback-ahead.js';

export interface StreamOptions extends JobOptions {
  /** The image to fill, open for writing with its backing chain. */
  image: BlockNode;
  /**
   * How many backing files below the image are copied from: those above the base (all of them
   * when there is no base). Data at that depth or shallower is copied; deeper stays behind.
   */
  layers: number;
  /**
   * Where the image's backing link points once everything is copied: the base (its name as the
   * image will store it, and its format), or nowhere.
   */
  base?: { name: string; format: string } | undefined;
  /** Bytes per second copied (QMP's speed); 0 or absent: no limit. */
  rateLimit?: number;
  /** Copies in flight; default 4. */
  inFlight?: number;
  /** Most bytes one copy request reads; default 8 MiB, rounded down to whole clusters. */
  bufferSize?: number;
  /** How the copies are serialised against guest writes (the copy-on-read filter's knob). */
  serialise?: Serialise;
}

/**
 * Most copied by one request by default: large, so that the layers are crossed few times per
 * byte (8 MiB measured best against 2 and 4 MiB), yet prompt for progress and cancel.
 */
const DEFAULT_BUFFER = 8 * 1024 * 1024;

/**
 * QEMU's block-stream as a job (qemu-img rebase -b '' does the same copying): every range the
 * image does not hold but the backing files above the base do is copied into the image, then the
 * image's backing link is rewritten to the base, or dropped. All-zero data becomes zero clusters.
 *
 * The copying is copy-on-read: the job reads through a copy-on-read filter over the image, which
 * writes what it reads into the image, whole clusters at a time, only where the image still lacks
 * them, serialised against writes that pass through the same filter. So guest I/O may go on while
 * the job runs — through `node`, the filter: a write never gets buried under stale backing data.
 * Cancelled, the job stops between requests; the image reads as before (what was copied is what
 * the backing chain held) and keeps its backing link.
 */
export class StreamJob extends Job<void> {
  /** The image as it must be read and written while the job runs. */
  readonly node: CopyOnReadNode;

  constructor(private readonly opts: StreamOptions) {
    super(opts);
    this.node = new CopyOnReadNode(opts.image, { bottomDepth: opts.layers, serialise: opts.serialise });
  }

  protected async run(): Promise<void> {
    const { image, layers } = this.opts;
    this.setTotal(image.size);
    const rate = new RateLimit(this.opts.rateLimit ?? 0);
    const cluster = this.node.clusterSize;
    const chunk = Math.max(cluster, alignDown(this.opts.bufferSize ?? DEFAULT_BUFFER, cluster));
    const plan = streamPlan(image, layers, this.opts.base === undefined, chunk)[Symbol.asyncIterator]();
    let failure: unknown;
    // The image's writeback starts as the copies go, so that the flush ending them is short.
    const ahead = new WritebackAhead(image);
    const worker = async () => {
      let buf: Uint8Array | undefined;
      while (failure === undefined) {
        try {
          await this.checkpoint();
          const next = await plan.next();
          if (next.done) return;
          const { offset, length, copy } = next.value;
          if (copy) {
            await rate.take(length, this.signal);
            buf ??= new Uint8Array(chunk);
            // The read copies as it goes; its bytes are not needed here (QEMU's PREFETCH).
            await this.node.read(offset, buf.subarray(0, length));
            ahead.moved(length);
          }
          if (failure === undefined) this.addProgress(length);
        } catch (err) {
          failure ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: this.opts.inFlight ?? 4 }, worker));
    await ahead.settle().catch((err: unknown) => (failure ??= err));
    // What was copied is flushed whether or not the job goes on: the image stays consistent.
    await image.flush();
    if (failure !== undefined) throw failure;
    if (layers === 0 && !image.backing) return;
    await this.checkpoint();
    await relink(image, this.opts.base);
  }
}

interface StreamStep {
  offset: number;
  length: number;
  /** Read through the filter (it copies); otherwise nothing to do. */
  copy: boolean;
}

/**
 * The image's block status walked window by window, cut into steps of at most `chunk` (whole
 * clusters, aligned to `chunk`, so copies of neighbouring steps never share a cluster): ranges the
 * image lacks and the layers above the base hold are copied. With the link dropped, explicit
 * zeros anywhere need no copy: the image reads zeros where it holds nothing.
 */
async function* streamPlan(image: BlockNode, layers: number, dropLink: boolean, chunk: number): AsyncGenerator<StreamStep> {
  let pending: StreamStep | undefined;
  const emit = function* (all: boolean): Generator<StreamStep> {
    while (pending && pending.length > 0) {
      const boundary = alignDown(pending.offset, chunk) + chunk;
      const end = pending.offset + pending.length;
      if (boundary > end && !all) return;
      const stop = Math.min(boundary, end);
      yield { offset: pending.offset, length: stop - pending.offset, copy: pending.copy };
      pending = stop < end ? { offset: stop, length: end - stop, copy: pending.copy } : undefined;
    }
    pending = undefined;
  };
  for await (const list of image.extentLists(0, image.size)) {
    for (const e of list) {
      // A walk that stops above the base stopped at the end of a layer shorter than its backing
      // file: it reads zeros there, hiding the base. With the link kept those zeros would have to
      // be copied, and the copy-on-read filter copies only what some layer holds. Refused until
      // it can (nothing is linked anew).
      if (!dropLink && !e.present && e.depth < layers) {
        throw new NotSupportedError(`Cannot stream into '${image.filename}' while keeping a base: a backing file above the base is shorter than its own `
          + `backing file, and the zeros past its end cannot be copied yet`, { op: 'stream', offset: e.offset });
      }
      const copy = e.present && e.depth >= 1 && e.depth <= layers && !(dropLink && e.zero && !e.data);
      if (pending && pending.copy !== copy) yield* emit(true);
      if (pending) pending.length += e.length;
      else pending = { offset: e.offset, length: e.length, copy };
      yield* emit(false);
    }
  }
  yield* emit(true);
}

/** QEMU's bdrv_change_backing_file, for the formats that store a backing link. */
async function relink(image: BlockNode, base: StreamOptions['base']): Promise<void> {
  if (!(image instanceof Qcow2Node)) throw new NotSupportedError(`${image.driver} images have no backing link to change`, { node: image.nodeName, op: 'stream' });
  await changeBackingFile(image, base?.name, base?.format);
}
