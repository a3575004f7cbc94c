import { BlockNode, type NodeOptions } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import type { IoOptions, WriteOptions, ZeroOptions } from '../../../core/types.js';

export interface MemoryOptions extends NodeOptions {
  size: number;
  /** Initial contents; copied. */
  data?: Uint8Array;
}

/** Cap on one in-memory image, so a typo in a size cannot exhaust the process. */
export const MAX_MEMORY_SIZE = 8 * 1024 ** 3;

/** An image held in process memory: tests, scratch overlays, benchmarks. */
export class MemoryNode extends BlockNode {
  readonly driver = 'memory';
  private bytes: Uint8Array;

  constructor(opts: MemoryOptions) {
    super(opts);
    MemoryNode.checkSize(opts.size);
    this.bytes = new Uint8Array(opts.size);
    if (opts.data) this.bytes.set(opts.data.subarray(0, opts.size));
    this.size = opts.size;
  }

  override get filename(): string {
    return `memory:${this.nodeName}`;
  }

  override async allocatedSize(): Promise<number> {
    return this.bytes.byteLength;
  }

  /** The current contents (a view, not a copy). */
  get contents(): Uint8Array {
    return this.bytes;
  }

  protected async _read(offset: number, into: Uint8Array): Promise<void> {
    into.set(this.bytes.subarray(offset, offset + into.byteLength));
  }

  protected override async _write(offset: number, data: Uint8Array, _opts: WriteOptions): Promise<void> {
    this.bytes.set(data, offset);
  }

  protected override async _writeZeroes(offset: number, length: number, _opts: ZeroOptions): Promise<void> {
    this.bytes.fill(0, offset, offset + length);
  }

  protected override async _discard(offset: number, length: number, _opts: IoOptions): Promise<void> {
    this.bytes.fill(0, offset, offset + length);
  }

  protected override async _resize(size: number): Promise<void> {
    MemoryNode.checkSize(size);
    const next = new Uint8Array(size);
    next.set(this.bytes.subarray(0, Math.min(size, this.bytes.byteLength)));
    this.bytes = next;
  }

  private static checkSize(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0 || size > MAX_MEMORY_SIZE) {
      throw new BlockError('EINVAL', `memory image size must be between 0 and ${MAX_MEMORY_SIZE} bytes, not ${size}`, { op: 'open' });
    }
  }
}
