import { BlockNode, type NodeOptions } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import type { Extent, WriteOptions, ZeroOptions } from '../../../core/types.js';

export interface NullOptions extends NodeOptions {
  size: number;
}

/**
 * Reads zeros and drops writes (QEMU null-co with read-zeroes=on, nbdkit's null plugin). Useful as
 * a benchmark sink: what remains is the cost of the layers above it.
 */
export class NullNode extends BlockNode {
  readonly driver = 'null';

  constructor(opts: NullOptions) {
    super(opts);
    if (!Number.isSafeInteger(opts.size) || opts.size < 0) {
      throw new BlockError('EINVAL', `null image size must be a non-negative byte count, not ${opts.size}`, { op: 'open' });
    }
    this.size = opts.size;
  }

  override get filename(): string {
    return 'null-co://';
  }

  override async allocatedSize(): Promise<number> {
    return 0;
  }

  protected async _read(_offset: number, into: Uint8Array): Promise<void> {
    into.fill(0);
  }

  protected override async _write(_offset: number, _data: Uint8Array, _opts: WriteOptions): Promise<void> {}

  protected override async _writeZeroes(_offset: number, _length: number, _opts: ZeroOptions): Promise<void> {}

  protected override async _discard(): Promise<void> {}

  protected override async _flush(): Promise<void> {}

  protected override async _blockStatus(offset: number, maxLength: number): Promise<Extent> {
    return { offset, length: maxLength, data: false, zero: true, present: true, depth: 0 };
  }

  protected override async _resize(): Promise<void> {}
}
