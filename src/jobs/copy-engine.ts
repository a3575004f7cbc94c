import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import { zeroBuffer } from '../core/zero-detect.js';
import { native } from '../native/index.js';
import type { PreparedPart } from './compressed-copy.js';
import type { CompressedTarget } from './compressed-target.js';
import { DEFAULT_MAX_ZERO, planCopy, type CopyRequest } from './copy-plan.js';
import { HostCopy } from './host-copy.js';
import { SourceSpan } from './source-span.js';
import { sparseRuns, type SparseRun } from './sparse-runs.js';
import { WriteOrder } from './write-order.js';

/**
 * The one extent-driven copy engine (DESIGN.md §6), shaped like qemu-img convert's loop and
 * nbdcopy's: the sources' block status is walked batch by batch; known zeros become write-zeroes
 * (or nothing on a target known to read zeros); data is read and scanned for zero blocks at the
 * sparse size; several requests are in flight; the first error stops the rest.
 */
export interface CopyOptions {
  /** Copied one after another: the target gets the sum of their sizes. */
  sources: readonly BlockNode[];
  target: BlockNode;
  /** The target reads as zeros already (freshly created, or the user says so): zeros need no write. */
  targetIsZero: boolean;
  /** The target is an overlay whose backing file holds the sources' backing chain (convert -B). */
  targetBacking?: { size: number };
  /** Zero runs at least this long in data are left sparse (-S); 0 writes every byte as data. */
  sparseSize: number;
  /** Requests in flight (-m). */
  inFlight: number;
  /** Writes may complete in any order (-W); otherwise they are issued in target order. */
  outOfOrder: boolean;
  /**
   * Data goes to the target as compressed clusters (convert -c): whole clusters only, compressed
   * by as many requests at once as are in flight, before their turn to be stored.
   */
  compressed?: boolean;
  /**
   * Data may be copied in the kernel where both ends are plain files (host-copy.ts). On XFS and
   * btrfs that copy may share the extents instead, so a caller that promises a real copy
   * (convert --reflink=never) leaves it off. Default off.
   */
  kernelCopy?: boolean;
  /**
   * With kernelCopy, data is copied in the kernel into qcow2 targets too, into clusters the
   * target allocates for it (host-alloc.ts). Default off, and nothing turns it on yet: into a
   * new qcow2 from a raw source (convert) and into a commit's qcow2 base it measured slower than
   * the copy through memory on ext4 (BENCHMARKS.md).
   */
  allocatingKernelCopy?: boolean;
  /** Largest data request; default 2 MiB (qemu-img's), raised to the target's preferred transfer. */
  bufferSize?: number;
  /** Called before each request: waits while the job is paused, throws once it is cancelled. */
  checkpoint?: () => Promise<void>;
  /** Bytes of the target dealt with, as each request finishes. */
  onProgress?: (bytes: number) => void;
}

export const DEFAULT_BUFFER_SIZE = 2 * 1024 * 1024;
const MAX_BUFFER_SIZE = 16 * 1024 * 1024;

export async function copyImage(opts: CopyOptions): Promise<void> {
  const total = opts.sources.reduce((sum, s) => sum + s.size, 0);
  if (total > opts.target.size) {
    throw new BlockError('EINVAL', `The target (${opts.target.size} bytes) is smaller than the input (${total} bytes)`, { op: 'copy' });
  }
  if (!Number.isSafeInteger(opts.inFlight) || opts.inFlight < 1) {
    throw new BlockError('EINVAL', `Requests in flight must be at least 1, not ${opts.inFlight}`, { op: 'copy' });
  }
  await new CopyRun(opts, opts.compressed ? await loadCompression() : undefined).run();
}

/** What a compressed copy (convert -c) adds: loaded only for one, as each module is start-up time. */
type Compression = typeof import('./cluster-plan.js') & typeof import('./compressed-copy.js') & typeof import('./compressed-target.js');

async function loadCompression(): Promise<Compression> {
  const [plan, copy, target] = await Promise.all([import('./cluster-plan.js'), import('./compressed-copy.js'), import('./compressed-target.js')]);
  return { ...plan, ...copy, ...target };
}

class CopyRun {
  private readonly target: BlockNode;
  private readonly bufferSize: number;
  /** Zero detection looks at blocks of this size, aligned in the target. */
  private readonly granule: number;
  private readonly plan: AsyncIterator<CopyRequest>;
  private readonly order: WriteOrder | undefined;
  private readonly span: SourceSpan;
  /** The target's compressed writes, for convert -c. */
  private readonly compressor: CompressedTarget | undefined;
  private targetIsZero: boolean;
  private failure: unknown;
  /** Zero data for -S 0, shared by all workers (writes never change their buffer). */
  private zeros: Uint8Array | undefined;
  /** Data copied in the kernel between plain files, where both ends are (host-copy.ts). */
  private host: HostCopy | undefined;

  constructor(private readonly opts: CopyOptions, private readonly compression: Compression | undefined) {
    this.target = opts.target;
    this.targetIsZero = opts.targetIsZero;
    const limits = this.target.limits;
    let bufferSize = Math.min(MAX_BUFFER_SIZE, Math.max(opts.bufferSize ?? DEFAULT_BUFFER_SIZE, limits.optTransfer));
    this.granule = Math.max(pow2floor(opts.sparseSize), limits.requestAlignment, 1);
    this.span = new SourceSpan(opts.sources);
    this.compressor = compression?.compressedTarget(this.target);
    const cs = this.compressor?.clusterSize;
    if (opts.compressed && cs === undefined) throw new BlockError('ENOTSUP', 'Compression not supported for this file format', { op: 'copy' });
    // Compressed data requests are whole clusters.
    if (cs !== undefined) bufferSize = Math.max(cs, bufferSize - (bufferSize % cs));
    this.bufferSize = bufferSize;
    const plan = planCopy({ sources: opts.sources, maxData: bufferSize, targetBacking: opts.targetBacking });
    if (cs === undefined) {
      this.plan = plan[Symbol.asyncIterator]();
    } else {
      // With -S 0 zeros are compressed like data: zero requests no longer than a data buffer.
      const maxZero = opts.sparseSize === 0 ? bufferSize : DEFAULT_MAX_ZERO;
      this.plan = compression!.clusterPlan(plan, { span: this.span, clusterSize: cs, maxData: bufferSize, maxZero })[Symbol.asyncIterator]();
    }
    this.order = opts.outOfOrder ? undefined : new WriteOrder();
  }

  async run(): Promise<void> {
    // A compressed cluster can only be written where the target holds nothing: first zero what
    // the copy will write (qemu-img 7.2 does not, and fails on a target that holds data).
    if (this.compressor && !this.targetIsZero && !this.opts.targetBacking) {
      try {
        await this.makeZero();
      } catch (err) {
        this.fail(err);
      }
      this.targetIsZero = this.failure === undefined;
    }
    if (this.opts.kernelCopy && !this.compressor) this.host = await HostCopy.create(this.target, { allocating: this.opts.allocatingKernelCopy ?? false });
    await Promise.all(Array.from({ length: this.opts.inFlight }, () => this.worker()));
    // Every request has settled, so the target is as consistent as its driver keeps it; flush
    // what was written even when stopping early, then report the first error.
    try {
      await this.target.flush();
    } catch (err) {
      this.fail(err);
    }
    if (this.failure !== undefined) throw this.failure;
  }

  private async worker(): Promise<void> {
    let buf: Uint8Array | undefined;
    while (this.failure === undefined) {
      let req: CopyRequest;
      try {
        await this.opts.checkpoint?.();
        const next = await this.plan.next();
        if (next.done) return;
        req = next.value;
      } catch (err) {
        return this.fail(err);
      }
      try {
        if (req.kind === 'data' && (await this.hostCopy(req, () => (buf ??= this.allocate())))) {
          // Copied in the kernel.
        } else if (req.kind === 'data') {
          buf ??= this.allocate();
          const data = buf.subarray(0, req.length);
          await this.step('reading', req.offset, () => this.span.read(req.offset, data));
          if (this.compressor) {
            await this.compressed(req, data);
          } else if (await this.turn(req)) {
            await this.writeData(req.offset, data);
          }
        } else if (req.kind === 'zero' && this.compressor && this.opts.sparseSize === 0) {
          // -S 0 allocates every cluster, and on a compressed target that means compressed zeros.
          this.zeros ??= zeroBuffer(this.bufferSize);
          await this.compressed(req, this.zeros.subarray(0, req.length));
        } else if (await this.turn(req)) {
          if (req.kind === 'zero') await this.writeZeroRun(req.offset, req.length);
        }
      } catch (err) {
        return this.fail(err);
      } finally {
        this.order?.done(req.seq);
      }
      if (this.failure === undefined) this.opts.onProgress?.(req.length);
    }
  }

  /** In-order mode: waits until every earlier request has written. False once the copy stops. */
  private async turn(req: CopyRequest): Promise<boolean> {
    if (this.order && !(await this.order.turn(req.seq))) return false;
    return this.failure === undefined;
  }

  /**
   * A data request copied in the kernel (host-copy.ts): false when it cannot be, and goes
   * through memory instead (even after its turn: the request keeps its place in target order).
   */
  private async hostCopy(req: CopyRequest, buffer: () => Uint8Array): Promise<boolean> {
    const from = this.host?.route(req);
    if (!from) return false;
    const runs = await this.host!.scan(req, from, this.granule, this.opts.sparseSize);
    if (!runs) return false;
    if (!(await this.turn(req))) return true;
    await this.host!.write(req, from, runs, {
      zero: (offset, length) => this.writeZeroRun(offset, length),
      memory: async (offset, length, parts) => {
        // The parts the kernel does not copy (partial clusters of a qcow2 target, or all of the
        // rest once these files turned out not to copy this way).
        const data = buffer().subarray(0, length);
        await this.step('reading', offset, () => this.span.read(offset, data));
        await this.writeRuns(parts, offset, data);
      },
      step: (what, offset, io) => this.step(what, offset, io),
    });
    return true;
  }

  private async writeData(offset: number, data: Uint8Array): Promise<void> {
    const runs = this.opts.sparseSize === 0 ? [{ offset, length: data.byteLength, zero: false }] : sparseRuns(data, offset, this.granule, this.opts.sparseSize);
    await this.writeRuns(runs, offset, data);
  }

  /** Writes the runs of `data` (at target `offset`): data runs as data, zero runs as zeros. */
  private async writeRuns(runs: readonly SparseRun[], offset: number, data: Uint8Array): Promise<void> {
    for (const run of runs) {
      if (run.zero) await this.writeZeroRun(run.offset, run.length);
      else await this.step('writing', run.offset, () => this.target.write(run.offset, data.subarray(run.offset - offset, run.offset - offset + run.length)));
    }
  }

  /**
   * Compresses ahead of the request's turn and stores at its turn. A failure to compress is a
   * failure of the write, so it is reported at the turn too: the error of the first request in
   * target order wins, as in qemu-img, whose compressed writes fail in order.
   */
  private async compressed(req: CopyRequest, data: Uint8Array): Promise<void> {
    const prepared = await this.step('writing', req.offset, () => this.compression!.prepareCompressed(this.compressor!, req.offset, data, this.opts.sparseSize > 0))
      .then((parts) => ({ parts }), (error: unknown) => ({ error }));
    if (!(await this.turn(req))) return;
    if ('error' in prepared) throw prepared.error;
    await this.commit(prepared.parts);
  }

  private async commit(parts: readonly PreparedPart[]): Promise<void> {
    for (const part of parts) {
      if (part.zero) await this.writeZeroRun(part.offset, part.length);
      else await this.step('writing', part.offset, part.commit);
    }
  }

  /**
   * Zeroes (may unmap) what the target holds in the clusters a compressed copy writes: the
   * copied range, to the end of its last cluster. Beyond, the target keeps what it holds.
   */
  private async makeZero(): Promise<void> {
    const cs = this.compressor!.clusterSize;
    const end = Math.min(this.target.size, Math.ceil(this.span.size / cs) * cs);
    if (end === 0) return;
    for await (const list of this.target.extentLists(0, end)) {
      for (const e of list) {
        if (!e.zero) await this.step('writing', e.offset, () => this.target.writeZeroes(e.offset, e.length, { mayUnmap: true }));
      }
    }
  }

  /** A range the target must read as zeros: nothing, a cheap zero write, or (-S 0) zero data. */
  private async writeZeroRun(offset: number, length: number): Promise<void> {
    if (this.opts.sparseSize === 0) {
      // -S 0 allocates the whole target, as qemu-img does: zeros are written as data.
      for (let pos = offset; pos < offset + length; pos += this.bufferSize) {
        const n = Math.min(this.bufferSize, offset + length - pos);
        this.zeros ??= zeroBuffer(this.bufferSize);
        const zeros = this.zeros.subarray(0, n);
        await this.step('writing', pos, () => this.target.write(pos, zeros));
      }
      return;
    }
    if (this.targetIsZero) return;
    await this.step('writing', offset, () => this.target.writeZeroes(offset, length, { mayUnmap: true }));
  }

  /** Runs one I/O and names its failure as qemu-img does ("error while writing at byte N: …"). */
  private async step<T>(what: 'reading' | 'writing', offset: number, io: () => Promise<T>): Promise<T> {
    try {
      return await io();
    } catch (err) {
      const e = err as BlockError;
      throw new BlockError(e.code ?? 'EIO', `error while ${what} at byte ${offset}: ${e.message}`, { op: what === 'reading' ? 'read' : 'write', offset }, { cause: err });
    }
  }

  /** The first error wins; the others stop at their next request. */
  private fail(err: unknown): void {
    if (this.failure === undefined) this.failure = err;
    this.order?.abort();
  }

  private allocate(): Uint8Array {
    const align = Math.max(this.target.limits.memoryAlignment, ...this.opts.sources.map((s) => s.limits.memoryAlignment));
    return align > 1 && native ? native.alignedBuffer(this.bufferSize, align) : new Uint8Array(this.bufferSize);
  }
}

function pow2floor(n: number): number {
  return n < 1 ? 0 : 2 ** Math.floor(Math.log2(n));
}
