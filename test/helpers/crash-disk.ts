/**
 * A disk with a volatile write cache, for crash simulation (DESIGN.md §11): a protocol node in
 * memory that logs every write, zero write, discard, resize and flush as it starts and ends.
 * `crashImage(at, rng)` is what a power cut after log event `at` may leave: every change that
 * ended before a flush that began and ended by then, plus any subset of the changes under way
 * or not yet flushed. Tests open a format over it, run a workload, then judge the crash images.
 */
import { BlockNode } from '../../src/core/block-node.js';
import type { IoOptions, WriteOptions, ZeroOptions } from '../../src/core/types.js';
import type { Rng } from './workload.js';

export interface Change {
  kind: 'write' | 'zero' | 'resize';
  offset: number;
  /** Bytes for a write; the new size for a resize. */
  data?: Uint8Array;
  length: number;
  allocate?: boolean;
}

export type CrashEvent =
  | { t: 'start' | 'end'; change: Change }
  | { t: 'flush-start' | 'flush-end'; id: number }
  /** The caller's own milestones (a guest write acknowledged, a guest flush begun or ended). */
  | { t: 'mark'; label: string };

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export class CrashDisk extends BlockNode {
  readonly driver = 'crash-disk';
  /** Every change, flush and mark, in order (`events` is BlockNode's debug-event emitter). */
  readonly log: CrashEvent[] = [];
  private bytes: Uint8Array;
  private readonly initial: Uint8Array;
  private flushes = 0;

  /**
   * `delays` picks how many turns of the event loop each change (or flush: no argument) stays
   * in flight: a seeded random choice makes requests overtake one another as on a real disk;
   * default one.
   */
  constructor(initial: Uint8Array, private readonly name = 'crash-disk', private readonly delays: (change?: Change) => number = () => 1) {
    super({ growable: true });
    this.initial = initial.slice();
    this.bytes = initial.slice();
    this.size = initial.byteLength;
  }

  override get filename(): string {
    return this.name;
  }

  /** The disk as it is now, every change applied (a view, not a copy). */
  get contents(): Uint8Array {
    return this.bytes;
  }

  mark(label: string): void {
    this.log.push({ t: 'mark', label });
  }

  /** Changes of one kind so far (e.g. allocate zero writes). */
  count(pred: (c: Change) => boolean): number {
    return this.log.filter((e) => e.t === 'start' && pred(e.change)).length;
  }

  protected async _read(offset: number, into: Uint8Array): Promise<void> {
    into.fill(0);
    into.set(this.bytes.subarray(offset, Math.min(offset + into.byteLength, this.bytes.byteLength)));
  }

  protected override _write(offset: number, data: Uint8Array, _opts: WriteOptions): Promise<void> {
    return this.change({ kind: 'write', offset, length: data.byteLength, data: data.slice() });
  }

  protected override _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    return this.change({ kind: 'zero', offset, length, allocate: opts.allocate === true });
  }

  protected override _discard(offset: number, length: number, _opts: IoOptions): Promise<void> {
    return this.change({ kind: 'zero', offset, length });
  }

  protected override _resize(size: number): Promise<void> {
    return this.change({ kind: 'resize', offset: size, length: 0 });
  }

  protected override async _flush(): Promise<void> {
    const id = ++this.flushes;
    this.log.push({ t: 'flush-start', id });
    await this.wait();
    this.log.push({ t: 'flush-end', id });
  }

  /** Flushes pass no change. */
  private async wait(change?: Change): Promise<void> {
    for (let n = this.delays(change); n > 0; n--) await nextTurn();
  }

  private async change(c: Change): Promise<void> {
    this.log.push({ t: 'start', change: c });
    await this.wait(c);
    this.bytes = apply(this.bytes, c);
    this.log.push({ t: 'end', change: c });
  }

  /**
   * The disk after a crash right after event `at`: changes that ended before the start of the
   * last flush that ended by `at` are there; of the others started by `at`, a random subset
   * (in the order they ended, those still in flight last).
   */
  crashImage(at: number, rng: Rng): Uint8Array {
    let durableBefore = 0;
    const flushStart = new Map<number, number>();
    for (let i = 0; i <= at; i++) {
      const e = this.log[i]!;
      if (e.t === 'flush-start') flushStart.set(e.id, i);
      if (e.t === 'flush-end') durableBefore = flushStart.get(e.id)!;
    }
    const ended = new Set<Change>();
    const order: Change[] = [];
    for (let i = 0; i <= at; i++) {
      const e = this.log[i]!;
      if (e.t === 'end') {
        ended.add(e.change);
        order.push(e.change);
      }
    }
    const durable = new Set<Change>();
    for (let i = 0; i < durableBefore; i++) {
      const e = this.log[i]!;
      if (e.t === 'end') durable.add(e.change);
    }
    for (let i = 0; i <= at; i++) {
      const e = this.log[i]!;
      if (e.t === 'start' && !ended.has(e.change)) order.push(e.change);
    }
    let disk: Uint8Array = this.initial.slice();
    for (const c of order) if (durable.has(c) || rng.next() % 2 === 0) disk = apply(disk, c);
    return disk;
  }
}

function apply(disk: Uint8Array, c: Change): Uint8Array {
  if (c.kind === 'resize') {
    const next = new Uint8Array(c.offset);
    next.set(disk.subarray(0, Math.min(disk.byteLength, c.offset)));
    return next;
  }
  const end = c.offset + c.length;
  let out = disk;
  if (end > disk.byteLength) {
    out = new Uint8Array(end);
    out.set(disk);
  }
  if (c.kind === 'write') out.set(c.data!, c.offset);
  else out.fill(0, c.offset, end);
  return out;
}
