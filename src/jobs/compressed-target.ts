import type { BlockNode } from '../core/block-node.js';

/**
 * A target that takes compressed clusters (QEMU's BDRV_REQ_WRITE_COMPRESSED; the qcow2 node):
 * whole clusters from a cluster boundary, compressed by `prepareCompressedWrite` (many at once
 * is fine) and stored by `commit()` (in the order the copy wants).
 */
export interface CompressedTarget {
  readonly size: number;
  readonly clusterSize: number;
  prepareCompressedWrite(offset: number, data: Uint8Array): Promise<{ commit(): Promise<void> }>;
}

/** The node as a compressed target, or undefined when its format cannot compress. */
export function compressedTarget(node: BlockNode): CompressedTarget | undefined {
  const n = node as BlockNode & Partial<CompressedTarget>;
  return typeof n.prepareCompressedWrite === 'function' && typeof n.clusterSize === 'number' ? (n as BlockNode & CompressedTarget) : undefined;
}
