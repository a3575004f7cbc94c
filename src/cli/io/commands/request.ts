import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import type { Context } from '../command.js';

/*
 * Helpers shared by the commands that issue requests (read, write, discard).
 */

/**
 * qemu's blk_check_byte_request(): a request must lie within the image, else EIO. Checked here
 * rather than left to BlockNode (which says ERANGE) so the message is qemu-io's
 * "Input/output error"; bigint because an offset may be past 2^53.
 */
export function inImage(node: BlockNode, offset: bigint, bytes: bigint): boolean {
  const size = BigInt(node.size);
  return offset <= size && size - offset >= bytes;
}

/** The error qemu reports for a request outside the image. */
export function outOfRange(op: string): BlockError {
  return new BlockError('EIO', `${op} outside the image`, { op });
}

/** Checks "%ld is not a sector-aligned value for 'offset'|'count'" (vmstate and compressed I/O). */
export function sectorAligned(ctx: Context, offset: bigint, count: bigint): boolean {
  if (offset % 512n !== 0n) {
    ctx.print(`${offset} is not a sector-aligned value for 'offset'\n`);
    return false;
  }
  if (count % 512n !== 0n) {
    ctx.print(`${count} is not a sector-aligned value for 'count'\n`);
    return false;
  }
  return true;
}
