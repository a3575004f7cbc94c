/**
 * Nodes for the copy engine's unit tests: a source whose block status a test dictates, and a
 * target that records what reaches it, how many requests it holds at once, and can fail.
 */
import { BlockNode } from '../../../src/core/block-node.js';
import { BlockError } from '../../../src/core/errors.js';
import type { Extent, IoOptions, WriteOptions, ZeroOptions } from '../../../src/core/types.js';

/**
 * A run of a scripted source: bytes, `length` bytes of one value (data without the memory), or
 * zeros the source reports as a zero extent.
 */
export type Run = { data: Uint8Array } | { byte: number; length: number } | { zero: number; depth?: number; present?: boolean };

/**
 * An image described as runs: data runs read their bytes and report as data, zero runs read as
 * zeros and report as zero (at `depth`, present unless said otherwise). Block status answers up
 * to `batch` extents per call and counts the calls.
 */
export class ScriptedSource extends BlockNode {
  readonly driver = 'scripted';
  readonly extentList: (Extent & { bytes?: Uint8Array; byte?: number })[] = [];
  statusCalls = 0;
  /** Furthest offset block status has been asked about. */
  statusReach = 0;

  constructor(runs: readonly Run[], private readonly hooks: { batch?: number; readDelay?: (offset: number) => Promise<void>; failReadAt?: number } = {}) {
    super({ readOnly: true });
    let pos = 0;
    for (const r of runs) {
      if ('data' in r) this.extentList.push({ offset: pos, length: r.data.byteLength, data: true, zero: false, present: true, depth: 0, bytes: r.data });
      else if ('byte' in r) this.extentList.push({ offset: pos, length: r.length, data: true, zero: false, present: true, depth: 0, byte: r.byte });
      else this.extentList.push({ offset: pos, length: r.zero, data: false, zero: true, present: r.present ?? true, depth: r.depth ?? 0 });
      pos += this.extentList[this.extentList.length - 1]!.length;
    }
    this.size = pos;
  }

  /** The bytes the image reads as. */
  contents(): Uint8Array {
    const out = new Uint8Array(this.size);
    for (const e of this.extentList) {
      if (e.bytes) out.set(e.bytes, e.offset);
      if (e.byte !== undefined) out.fill(e.byte, e.offset, e.offset + e.length);
    }
    return out;
  }

  protected async _read(offset: number, into: Uint8Array, _opts: IoOptions): Promise<void> {
    await this.hooks.readDelay?.(offset);
    if (this.hooks.failReadAt !== undefined && offset <= this.hooks.failReadAt && this.hooks.failReadAt < offset + into.byteLength) {
      throw new BlockError('EIO', 'Input/output error', { op: 'read', offset });
    }
    into.fill(0);
    for (let i = this.indexAt(offset); i < this.extentList.length && this.extentList[i]!.offset < offset + into.byteLength; i++) {
      const e = this.extentList[i]!;
      if (!e.data) continue;
      const from = Math.max(e.offset, offset);
      const to = Math.min(e.offset + e.length, offset + into.byteLength);
      if (e.bytes) into.set(e.bytes.subarray(from - e.offset, to - e.offset), from - offset);
      else into.fill(e.byte!, from - offset, to - offset);
    }
  }

  /** Index of the extent holding `offset` (binary search: scripted images may have many). */
  private indexAt(offset: number): number {
    let [lo, hi] = [0, this.extentList.length - 1];
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.extentList[mid]!.offset <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  protected override async _blockStatusList(offset: number, maxLength: number): Promise<Extent[]> {
    this.statusCalls++;
    const end = offset + maxLength;
    const out: Extent[] = [];
    for (let i = this.indexAt(offset); i < this.extentList.length; i++) {
      const e = this.extentList[i]!;
      if (e.offset >= end) break;
      const from = Math.max(e.offset, offset);
      const to = Math.min(e.offset + e.length, end);
      const x: Extent = { offset: from, length: to - from, data: e.data, zero: e.zero, present: e.present, depth: e.depth };
      // Where a test placed the extent in a host file (copy-plan's host ranges).
      if (e.hostOffset !== undefined) Object.assign(x, { hostOffset: e.hostOffset + from - e.offset, hostFile: e.hostFile });
      if (e.compressed) x.compressed = true;
      out.push(x);
      if (out.length === (this.hooks.batch ?? Infinity)) break;
    }
    const last = out[out.length - 1]!;
    this.statusReach = Math.max(this.statusReach, last.offset + last.length);
    return out;
  }
}

export interface TargetCall {
  op: 'write' | 'writeZeroes' | 'flush';
  offset?: number;
  length?: number;
  mayUnmap?: boolean;
}

/** A target in memory that records its calls and the most requests it held at once. */
export class RecordingTarget extends BlockNode {
  readonly driver = 'recording-target';
  readonly bytes: Uint8Array;
  readonly calls: TargetCall[] = [];
  busy = 0;
  maxBusy = 0;

  constructor(size: number, private readonly hooks: { writeDelay?: (offset: number) => Promise<void>; failWriteAt?: number; initial?: number } = {}) {
    super();
    this.size = size;
    this.bytes = new Uint8Array(size).fill(hooks.initial ?? 0);
  }

  callsOf(op: TargetCall['op']): TargetCall[] {
    return this.calls.filter((c) => c.op === op);
  }

  protected async _read(offset: number, into: Uint8Array): Promise<void> {
    into.set(this.bytes.subarray(offset, offset + into.byteLength));
  }

  protected override async _write(offset: number, data: Uint8Array, _opts: WriteOptions): Promise<void> {
    this.calls.push({ op: 'write', offset, length: data.byteLength });
    await this.held(async () => {
      await this.hooks.writeDelay?.(offset);
      if (this.hooks.failWriteAt !== undefined && offset <= this.hooks.failWriteAt && this.hooks.failWriteAt < offset + data.byteLength) {
        throw new BlockError('ENOSPC', 'No space left on device', { op: 'write', offset });
      }
      this.bytes.set(data, offset);
    });
  }

  protected override async _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    this.calls.push({ op: 'writeZeroes', offset, length, mayUnmap: opts.mayUnmap });
    await this.held(async () => {
      await this.hooks.writeDelay?.(offset);
      this.bytes.fill(0, offset, offset + length);
    });
  }

  protected override async _flush(): Promise<void> {
    this.calls.push({ op: 'flush' });
  }

  private async held(fn: () => Promise<void>): Promise<void> {
    this.maxBusy = Math.max(this.maxBusy, ++this.busy);
    try {
      await fn();
    } finally {
      this.busy--;
    }
  }
}

/** Resolves after `n` turns of the event loop: a delay that orders requests without a clock. */
export async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}
