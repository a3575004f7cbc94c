import type { BlockNode } from '../../core/block-node.js';
import { BlockError } from '../../core/errors.js';
import {
  NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_HAS_FLAGS, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_CACHE, NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_MAX_STRING, MAX_PAYLOAD, type BlockSizeInfo,
} from '../protocol.js';

/** What the server does with TRIM and with the unmap permission of WRITE_ZEROES (QEMU's `discard=`). */
export type DiscardMode = 'ignore' | 'unmap';

export interface ExportOptions {
  /** Export name; '' is the name a client asks for when it names none. */
  name?: string;
  description?: string;
  /** Export read-only even when the node is writable (qemu-nbd -r). */
  readOnly?: boolean;
  /** QEMU's default is `ignore`: TRIM succeeds without deallocating, zero writes allocate. */
  discard?: DiscardMode;
  /** Offer the `qemu:allocation-depth` context (qemu-nbd -A). */
  allocationDepth?: boolean;
}

/** One export: a block node and how it is offered. Several connections share it. */
export class NbdExport {
  readonly name: string;
  readonly description: string;
  readonly node: BlockNode;
  readonly readOnly: boolean;
  readonly discard: DiscardMode;
  readonly allocationDepth: boolean;

  constructor(node: BlockNode, opts: ExportOptions = {}) {
    this.node = node;
    this.name = opts.name ?? '';
    this.description = opts.description ?? '';
    this.readOnly = (opts.readOnly ?? false) || !node.caps.writable;
    this.discard = opts.discard ?? 'ignore';
    this.allocationDepth = opts.allocationDepth ?? false;
    for (const [what, text] of [['name', this.name], ['description', this.description]] as const) {
      if (Buffer.byteLength(text) > NBD_MAX_STRING) {
        throw new BlockError('EINVAL', `NBD export ${what} is longer than ${NBD_MAX_STRING} bytes`, { op: 'export' });
      }
    }
  }

  get size(): number {
    return this.node.size;
  }

  /**
   * The transmission flags for one connection. DF needs structured replies; CAN_MULTI_CONN is
   * true when every connection shares this node (so a flush on one covers writes acknowledged on
   * all) and the server lets a client open more than one connection.
   */
  transmissionFlags(structured: boolean, multiConn: boolean): number {
    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE;
    if (this.readOnly) flags |= NBD_FLAG_READ_ONLY;
    else flags |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    if (structured) flags |= NBD_FLAG_SEND_DF;
    if (multiConn && this.node.caps.multiConn) flags |= NBD_FLAG_CAN_MULTI_CONN;
    return flags;
  }

  /**
   * NBD_INFO_BLOCK_SIZE: the node's request alignment as the minimum (smaller requests are
   * read-modify-write), its optimal transfer (at least 4 KiB, as QEMU says) as preferred, and the
   * largest payload this server takes in one request. The generic layer splits requests at the
   * node's own maxTransfer, so that limit need not reach the client.
   */
  blockSizes(): BlockSizeInfo {
    const minimum = Math.min(this.node.limits.requestAlignment, 64 * 1024);
    const preferred = Math.max(4096, minimum, powerOfTwoAtMost(this.node.limits.optTransfer));
    return { minimum, preferred, maximum: Math.max(preferred, MAX_PAYLOAD) };
  }
}

function powerOfTwoAtMost(n: number): number {
  if (!(n >= 1)) return 0;
  return 2 ** Math.floor(Math.log2(Math.min(n, MAX_PAYLOAD)));
}
