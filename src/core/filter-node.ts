import { BlockNode, type NodeOptions } from './block-node.js';
import type { Capabilities, Extent, IoOptions, WriteOptions, ZeroOptions } from './types.js';

/**
 * A node that wraps one child (`file`) and forwards every operation to it. A filter overrides only
 * what it changes; its capabilities are the child's, so it never advertises more than the child
 * can do. When an operation is added here, decide for each filter whether forwarding is safe.
 */
export abstract class FilterNode extends BlockNode {
  constructor(readonly child: BlockNode, opts: NodeOptions = {}) {
    super({ ...opts, readOnly: (opts.readOnly ?? false) || child.readOnly });
    this.children.set('file', child);
    this.size = child.size;
    this.limits = { ...child.limits };
  }

  protected override get nativeFua(): boolean {
    return true;
  }

  protected override computeCaps(): Capabilities {
    const own = super.computeCaps();
    const c = this.child.caps;
    const writable = own.writable && c.writable;
    return {
      ...c,
      writable,
      fua: writable ? c.fua : 'none',
      zero: writable ? c.zero : 'none',
      discard: writable ? c.discard : 'none',
      fastZero: writable && c.fastZero,
      resize: writable && c.resize,
    };
  }

  protected _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    return this.child.read(offset, into, opts);
  }

  protected override _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    return this.child.write(offset, data, opts);
  }

  protected override _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    return this.child.writeZeroes(offset, length, opts);
  }

  protected override _discard(offset: number, length: number, opts: IoOptions): Promise<void> {
    return this.child.discard(offset, length, opts);
  }

  protected override _flush(opts: IoOptions): Promise<void> {
    return this.child.flush(opts);
  }

  protected override _blockStatusList(offset: number, maxLength: number, opts: IoOptions): Promise<Extent[]> {
    return this.child.blockStatusList(offset, maxLength, opts);
  }

  protected override async _resize(size: number): Promise<void> {
    await this.child.resize(size);
  }
}
