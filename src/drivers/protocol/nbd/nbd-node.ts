import { BlockNode, type NodeOptions } from '../../../core/block-node.js';
import { BlockError, NotSupportedError } from '../../../core/errors.js';
import { alignDown, defaultLimits } from '../../../core/limits.js';
import type { Capabilities, Extent, IoOptions, WriteOptions, ZeroOptions } from '../../../core/types.js';
import type { NbdClient } from '../../../nbd/client/client.js';
import {
  CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_ALLOCATION_DEPTH, NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES,
} from '../../../nbd/protocol.js';
import { toExtents } from './status-map.js';

/** Zero and trim requests carry no payload; one may cover this much (QEMU's nbd driver goes to 2 GiB too). */
const MAX_EFFECT = 2 ** 30;

/**
 * An NBD export as a protocol node (QEMU's `nbd` driver). The server's limits become the node's,
 * so the generic layer aligns and splits before a request reaches the wire; what the server does
 * not advertise is emulated (FUA as write + flush, zeroes as writes) or reported as absent.
 */
export class NbdNode extends BlockNode {
  readonly driver = 'nbd';

  constructor(private readonly client: NbdClient, opts: NodeOptions = {}) {
    // A read-only export makes a read-only node, as QEMU's auto-read-only does.
    super({ ...opts, readOnly: (opts.readOnly ?? false) || client.readOnly });
    this.size = client.size;
    const { minimum, preferred } = client.info.blockSizes;
    this.limits = defaultLimits({
      requestAlignment: minimum,
      maxTransfer: client.maxPayload,
      optTransfer: preferred,
      zeroAlignment: minimum,
      maxWriteZeroes: alignDown(MAX_EFFECT, minimum),
      discardAlignment: minimum,
      maxDiscard: alignDown(MAX_EFFECT, minimum),
    });
  }

  override get filename(): string {
    return this.client.describe;
  }

  /** QEMU's nbd driver has no bdrv_get_info: qemu-img info shows no dirty-flag over nbd. */
  override hasDriverInfo(): boolean {
    return false;
  }

  /** No way to learn how much the server stores (qemu-img prints "disk size: unavailable"). */
  override async allocatedSize(): Promise<number | undefined> {
    return undefined;
  }

  protected override get nativeFua(): boolean {
    return this.client.can(NBD_FLAG_SEND_FUA);
  }

  protected override computeCaps(): Capabilities {
    const caps = super.computeCaps();
    const can = (flag: number): boolean => this.client.can(flag);
    return {
      ...caps,
      flush: can(NBD_FLAG_SEND_FLUSH),
      fua: !caps.writable ? 'none' : can(NBD_FLAG_SEND_FUA) ? 'native' : can(NBD_FLAG_SEND_FLUSH) ? 'emulate' : 'native',
      zero: !caps.writable ? 'none' : can(NBD_FLAG_SEND_WRITE_ZEROES) ? 'native' : 'emulate',
      discard: caps.writable && can(NBD_FLAG_SEND_TRIM) ? 'native' : 'none',
      fastZero: caps.writable && can(NBD_FLAG_SEND_FAST_ZERO),
      blockStatus: this.client.hasContext(CONTEXT_BASE_ALLOCATION),
      multiConn: can(NBD_FLAG_CAN_MULTI_CONN),
    };
  }

  protected async _read(offset: number, into: Uint8Array, _opts: IoOptions): Promise<void> {
    await this.client.read(offset, into);
  }

  protected override async _write(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    await this.client.write(offset, data, { fua: opts.fua === true && this.nativeFua });
  }

  protected override async _writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    if (!this.client.can(NBD_FLAG_SEND_WRITE_ZEROES)) {
      throw new NotSupportedError(`${this.filename}: the server cannot write zeroes`, this.ctx('write-zeroes', offset, length));
    }
    // allocate = keep the range allocated, and only if that is cheap: NO_HOLE with FAST_ZERO.
    const fastZero = opts.noFallback === true || opts.allocate === true;
    if (fastZero && !this.client.can(NBD_FLAG_SEND_FAST_ZERO)) {
      throw new NotSupportedError(`${this.filename}: the server cannot promise fast zeroing`, this.ctx('write-zeroes', offset, length));
    }
    await this.client.writeZeroes(offset, length, {
      fua: opts.fua === true && this.nativeFua,
      noHole: !opts.mayUnmap || opts.allocate === true,
      fastZero,
    });
  }

  protected override async _discard(offset: number, length: number, _opts: IoOptions): Promise<void> {
    if (this.client.can(NBD_FLAG_SEND_TRIM)) await this.client.trim(offset, length);
  }

  protected override async _flush(_opts: IoOptions): Promise<void> {
    if (this.client.can(NBD_FLAG_SEND_FLUSH)) await this.client.flush();
  }

  protected override async _blockStatusList(offset: number, maxLength: number, _opts: IoOptions): Promise<Extent[]> {
    if (!this.client.hasContext(CONTEXT_BASE_ALLOCATION)) {
      return [{ offset, length: maxLength, data: true, zero: false, present: true, depth: 0, hostOffset: offset, hostFile: this.filename }];
    }
    const status = await this.client.blockStatus(offset, maxLength);
    const base = status.get(CONTEXT_BASE_ALLOCATION);
    if (!base) throw new BlockError('EIO', `${this.filename}: the server sent no base:allocation status`, this.ctx('block-status', offset, maxLength));
    return toExtents(offset, maxLength, base, status.get(CONTEXT_QEMU_ALLOCATION_DEPTH), this.filename);
  }

  protected override async _close(): Promise<void> {
    await this.client.close();
  }
}
