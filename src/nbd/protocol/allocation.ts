import { NBD_STATE_HOLE, NBD_STATE_ZERO } from './constants.js';

/*
 * The status words of the metadata contexts vdisk speaks (spec §5; QEMU's docs/interop/nbd.rst),
 * from an extent's point of view: the server encodes what its block status says, the client
 * decodes what the server reported. Both follow QEMU's nbd server and driver.
 */

/** base:allocation: HOLE where no layer stores data, ZERO where reads are known to be zeros. */
export function encodeAllocationStatus(e: { data: boolean; zero: boolean }): number {
  return (e.data ? 0 : NBD_STATE_HOLE) | (e.zero ? NBD_STATE_ZERO : 0);
}

/** base:allocation: HOLE clear means allocated (or unknown), so read as data, as QEMU's driver does. */
export function allocationIsData(status: number): boolean {
  return (status & NBD_STATE_HOLE) === 0;
}

/** base:allocation: ZERO set means the range reads as zeros. */
export function allocationIsZero(status: number): boolean {
  return (status & NBD_STATE_ZERO) !== 0;
}

/** qemu:allocation-depth: 0 unallocated in the whole chain, 1 this image, n the (n-1)th backing file. */
export function encodeAllocationDepth(e: { present: boolean; depth: number }): number {
  return e.present ? e.depth + 1 : 0;
}

/** qemu:allocation-depth: whether some layer of the chain holds the range. */
export function depthIsPresent(status: number): boolean {
  return status !== 0;
}
