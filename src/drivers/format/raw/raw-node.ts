import { BlockNode, type NodeOptions } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import type { Extent, IoOptions, WriteOptions, ZeroOptions } from '../../../core/types.js';

export interface RawOptions extends NodeOptions {
  /** Expose the slice starting here (bytes into the file). */
  offset?: number;
  /** Expose this many bytes; default: to the end of the file. */
  size?: number;
  /**
   * Set when the format was guessed rather than named. A guest that can write sector 0 of a
   * probed raw image could plant another format's header (say qcow2 naming a host file as its
   * backing) that the next probe would obey, so such writes are refused.
   */
  probedWith?: (sector0: Uint8Array) => string | undefined;
}

const SECTOR = 512;

/** A raw image: guest offset = file offset (+ `offset`), optionally limited to `size` bytes. */
export class RawNode extends BlockNode {
  readonly driver = 'raw';
  private readonly base: number;
  private readonly fixedSize: boolean;
  private readonly probe: ((sector0: Uint8Array) => string | undefined) | undefined;

  constructor(file: BlockNode, opts: RawOptions = {}) {
    super({ ...opts, readOnly: (opts.readOnly ?? false) || file.readOnly });
    const base = opts.offset ?? 0;
    const ctx = { node: this.nodeName, op: 'open', path: file.filename };
    if (!Number.isSafeInteger(base) || base < 0) throw new BlockError('EINVAL', `raw: offset must be a non-negative byte count, not ${opts.offset}`, ctx);
    if (base > file.size) throw new BlockError('EINVAL', `raw: offset ${base} is past the end of the file (${file.size} bytes)`, ctx);
    const size = opts.size ?? file.size - base;
    if (!Number.isSafeInteger(size) || size < 0) throw new BlockError('EINVAL', `raw: size must be a non-negative byte count, not ${opts.size}`, ctx);
    if (base + size > file.size) throw new BlockError('EINVAL', `raw: offset ${base} + size ${size} is past the end of the file (${file.size} bytes)`, ctx);
    this.children.set('file', file);
    this.base = base;
    this.fixedSize = opts.size !== undefined || base !== 0;
    this.probe = opts.probedWith;
    this.size = size;
    // The file's alignment holds here only when the slice starts on it; otherwise the file's own
    // layer does the read-modify-write.
    const fileAlign = file.limits.requestAlignment;
    this.limits = { ...file.limits, requestAlignment: base % fileAlign === 0 ? fileAlign : 1 };
    // As in QEMU, a probed image is written in whole sectors: sector 0 then only changes by a
    // read-modify-write of all of it, serialised by the generic layer, so two concurrent partial
    // writes cannot each pass the check below and together plant a header.
    if (this.probe) this.limits.requestAlignment = Math.max(this.limits.requestAlignment, SECTOR);
  }

  private get child(): BlockNode {
    return this.file!;
  }

  protected override get nativeFua(): boolean {
    return true;
  }

  override formatSpecific(): Record<string, unknown> | undefined {
    return undefined;
  }

  protected async _read(offset: number, into: Uint8Array, opts: IoOptions): Promise<void> {
    await this.child.read(this.base + offset, into, opts);
  }

  protected override async _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    if (offset < SECTOR && this.probe) await this.checkSector0(offset, data);
    await this.child.write(this.base + offset, data, opts);
  }

  protected override async _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    await this.child.writeZeroes(this.base + offset, length, opts);
  }

  protected override async _discard(offset: number, length: number, opts: IoOptions): Promise<void> {
    await this.child.discard(this.base + offset, length, opts);
  }

  protected override async _flush(opts: IoOptions): Promise<void> {
    await this.child.flush(opts);
  }

  protected override async _blockStatusList(offset: number, maxLength: number, opts: IoOptions): Promise<Extent[]> {
    const list = await this.child.blockStatusList(this.base + offset, maxLength, opts);
    // A protocol child's extents are already at depth 0 and present; with no offset to shift
    // they are ours as they stand, and a map of a big sparse file copies nothing.
    if (this.base === 0 && list.every((e) => e.depth === 0 && e.present)) return list;
    // Field by field rather than a spread: this runs once per extent of a map.
    return list.map((e) => {
      const out: Extent = { offset: e.offset - this.base, length: e.length, data: e.data, zero: e.zero, present: true, depth: 0 };
      if (e.compressed !== undefined) out.compressed = e.compressed;
      if (e.hostOffset !== undefined) out.hostOffset = e.hostOffset;
      if (e.hostFile !== undefined) out.hostFile = e.hostFile;
      return out;
    });
  }

  protected override async _resize(size: number): Promise<void> {
    if (this.fixedSize) throw new BlockError('ENOTSUP', 'raw: cannot resize an image with offset or size options', this.ctx('resize'));
    await this.child.resize(size);
  }

  private async checkSector0(offset: number, data: Uint8Array): Promise<void> {
    const sector = new Uint8Array(Math.min(SECTOR, this.size));
    await this.child.read(this.base, sector);
    sector.set(data.subarray(0, Math.max(0, sector.byteLength - offset)), offset);
    const format = this.probe!(sector);
    if (format && format !== 'raw') {
      throw new BlockError('EPERM', `Refusing a write to sector 0 of a probed raw image that would make it look like ${format}; open it with -f raw`,
        this.ctx('write', offset, data.byteLength));
    }
  }
}
