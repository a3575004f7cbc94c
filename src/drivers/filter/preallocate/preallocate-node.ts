import type { BlockNode, NodeOptions } from '../../../core/block-node.js';
import { isNotSupported } from '../../../core/errors.js';
import { FilterNode } from '../../../core/filter-node.js';
import { alignUp } from '../../../core/limits.js';
import type { WriteOptions, ZeroOptions } from '../../../core/types.js';

export interface PreallocateOptions extends NodeOptions {
  /** The file grows to a multiple of this (QEMU's prealloc-align, default 1 MiB). */
  preallocAlign?: number;
  /** How far past a write's end the file grows (QEMU's prealloc-size, default 128 MiB). */
  preallocSize?: number;
}

export const DEFAULT_PREALLOC_ALIGN = 1024 * 1024;
export const DEFAULT_PREALLOC_SIZE = 128 * 1024 * 1024;

/**
 * QEMU's preallocate filter: when a write passes the end of the data, the file under it grows
 * by prealloc-size at once (an allocate zero write, rounded up to prealloc-align), so storage
 * where allocating is expensive allocates in big steps; on close the file is cut back to the end
 * of the data. The node's size is that data end, as QEMU's getlength answers.
 *
 * Three offsets, as QEMU keeps them: `dataEnd` (the end of what was written: the node's size),
 * `fileEnd` (the file's end, preallocation included) and `zeroStart` (from there to fileEnd the
 * file reads zeros). Zero writes that fall wholly in [zeroStart, fileEnd) are done already and
 * cost nothing, which is what a format zeroing new clusters at the end of its file asks most.
 * Writes that pass dataEnd take turns (a chain of promises), so a preallocation never overlaps
 * a write in flight: every write in flight ends at or below fileEnd when one starts.
 */
export class PreallocateNode extends FilterNode {
  readonly driver = 'preallocate';
  private readonly align: number;
  private readonly step: number;
  private dataEnd: number;
  private fileEnd: number;
  private zeroStart: number;
  /** The file refused an allocate zero write: no more preallocation. */
  private unsupported = false;
  private extending: Promise<unknown> = Promise.resolve();

  constructor(child: BlockNode, opts: PreallocateOptions = {}) {
    super(child, opts);
    this.align = Math.max(opts.preallocAlign ?? DEFAULT_PREALLOC_ALIGN, child.limits.requestAlignment);
    this.step = opts.preallocSize ?? DEFAULT_PREALLOC_SIZE;
    this.dataEnd = this.fileEnd = this.zeroStart = child.size;
  }

  protected override async _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const end = offset + data.byteLength;
    if (end > this.dataEnd) await this.extend(offset, end, false);
    else if (end > this.zeroStart) this.zeroStart = end;
    return this.child.write(offset, data, opts);
  }

  protected override async _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    const end = offset + length;
    // A zero write that asks for nothing else (no unmap, no FUA) is done where the file reads zeros already.
    const merge = !opts.mayUnmap && !opts.fua;
    if (end > this.dataEnd && (await this.extend(offset, end, merge))) return;
    if (merge && offset >= this.zeroStart && end <= this.fileEnd) return;
    return this.child.writeZeroes(offset, length, opts);
  }

  /**
   * A request [offset, end) passes the data end: takes its turn, moves the data end and, when
   * the file is too short, preallocates. True when the request is a zero write (`merge`) whose
   * range now reads zeros, so nothing is left to do.
   */
  private extend(offset: number, end: number, merge: boolean): Promise<boolean> {
    const turn = this.extending.then(async () => {
      if (end > this.fileEnd) await this.preallocate(offset, end, merge);
      const zeroed = merge && offset >= this.zeroStart && end <= this.fileEnd;
      if (!merge && end > this.zeroStart) this.zeroStart = end;
      if (end > this.dataEnd) this.dataEnd = end;
      return zeroed;
    });
    this.extending = turn.catch(() => undefined);
    return turn;
  }

  private async preallocate(offset: number, end: number, merge: boolean): Promise<void> {
    if (this.unsupported) return;
    const fileAlign = this.child.limits.requestAlignment;
    // A zero write starting below the file end is zeroed by the preallocation itself.
    const start = alignUp(merge ? Math.min(offset, this.fileEnd) : this.fileEnd, fileAlign);
    const target = alignUp(Math.max(start, end) + this.step, this.align);
    try {
      await this.child.writeZeroes(start, target - start, { allocate: true });
    } catch (err) {
      // Not cheap here: plain writes from now on, as without the filter. Other errors (ENOSPC)
      // fail nothing: the write itself will tell, and the next one past the end tries again.
      if (isNotSupported(err)) this.unsupported = true;
      return;
    }
    if (this.zeroStart > start) this.zeroStart = start;
    this.fileEnd = target;
  }

  protected override async _resize(size: number): Promise<void> {
    // QEMU drops the preallocation first, so that growing gets what it asks (and shrinking is no
    // error), then resizes; afterwards everything up to the new end is data.
    await this.trim();
    await this.child.resize(size);
    this.dataEnd = this.fileEnd = this.zeroStart = size;
  }

  protected override async _close(): Promise<void> {
    await this.extending;
    await this.trim();
  }

  /** Cuts the file back to the end of the data. */
  private async trim(): Promise<void> {
    if (this.fileEnd <= this.dataEnd) return;
    await this.child.resize(this.dataEnd);
    this.fileEnd = this.dataEnd;
    if (this.zeroStart > this.fileEnd) this.zeroStart = this.fileEnd;
  }
}
