/**
 * Test-only drivers for unit tests of the generic layer: a memory-backed node whose limits, hooks
 * and timing a test chooses, and which records every hook call it receives.
 */
import { BlockNode, type NodeOptions } from '../../src/core/block-node.js';
import { NotSupportedError } from '../../src/core/errors.js';
import { defaultLimits } from '../../src/core/limits.js';
import type { BlockLimits, Extent, IoOptions, WriteOptions, ZeroOptions } from '../../src/core/types.js';

export interface HookCall {
  hook: 'read' | 'write' | 'writeZeroes' | 'discard' | 'flush' | 'blockStatus' | 'resize' | 'close';
  offset?: number;
  length?: number;
  opts?: Record<string, unknown>;
}

export interface RecordingOptions extends NodeOptions {
  size: number;
  limits?: Partial<BlockLimits>;
  /** Which optional hooks exist (default: all). */
  hooks?: Partial<Record<'write' | 'writeZeroes' | 'discard' | 'flush' | 'blockStatus' | 'resize', boolean>>;
  /** Awaited at the start of every read and write hook, to hold requests in flight. */
  delay?: () => Promise<void>;
  /** The zero hook refuses (ENOTSUP) when this says so. */
  refuseZero?: (offset: number, length: number, opts: ZeroOptions) => boolean;
  nativeFua?: boolean;
  /** Block status answers from this function instead of "all data". */
  status?: (offset: number, maxLength: number) => Extent;
}

/** Yields to the event loop once: long enough for any other ready request to make progress. */
export const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export class RecordingNode extends BlockNode {
  readonly driver = 'recording';
  readonly bytes: Uint8Array;
  readonly calls: HookCall[] = [];
  private readonly o: RecordingOptions;

  constructor(o: RecordingOptions) {
    super(o);
    this.o = o;
    this.size = o.size;
    this.bytes = new Uint8Array(o.size);
    this.limits = defaultLimits(o.limits);
    const has = (h: keyof NonNullable<RecordingOptions['hooks']>) => o.hooks?.[h] ?? true;
    // An absent hook means "not supported": delete the ones the test does not want.
    const self = this as unknown as Record<string, unknown>;
    for (const h of ['write', 'writeZeroes', 'discard', 'flush', 'blockStatus', 'resize'] as const) {
      if (!has(h)) self[`_${h}`] = undefined;
    }
  }

  protected override get nativeFua(): boolean {
    return this.o?.nativeFua ?? false;
  }

  /** The calls of one hook. */
  callsOf(hook: HookCall['hook']): HookCall[] {
    return this.calls.filter((c) => c.hook === hook);
  }

  protected async _read(offset: number, into: Uint8Array, _opts: IoOptions): Promise<void> {
    this.calls.push({ hook: 'read', offset, length: into.byteLength });
    await this.o.delay?.();
    into.set(this.bytes.subarray(offset, offset + into.byteLength));
  }

  protected override async _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    this.calls.push({ hook: 'write', offset, length: data.byteLength, opts: { ...opts } });
    const copy = data.slice();
    await this.o.delay?.();
    this.bytes.set(copy, offset);
  }

  protected override async _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    this.calls.push({ hook: 'writeZeroes', offset, length, opts: { ...opts } });
    if (this.o.refuseZero?.(offset, length, opts)) throw new NotSupportedError('refused by the test');
    this.bytes.fill(0, offset, offset + length);
  }

  protected override async _discard(offset: number, length: number, _opts: IoOptions): Promise<void> {
    this.calls.push({ hook: 'discard', offset, length });
    this.bytes.fill(0, offset, offset + length);
  }

  protected override async _flush(_opts: IoOptions): Promise<void> {
    this.calls.push({ hook: 'flush' });
  }

  protected override async _blockStatus(offset: number, maxLength: number, _opts: IoOptions): Promise<Extent> {
    this.calls.push({ hook: 'blockStatus', offset, length: maxLength });
    return this.o.status?.(offset, maxLength) ?? { offset, length: maxLength, data: true, zero: false, present: true, depth: 0 };
  }

  protected override async _resize(size: number): Promise<void> {
    this.calls.push({ hook: 'resize', offset: size });
  }

  protected override async _close(): Promise<void> {
    this.calls.push({ hook: 'close' });
  }
}
