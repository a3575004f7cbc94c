import type { BlockNode } from '../core/block-node.js';
import { NotSupportedError } from '../core/errors.js';
import { makeEmptyQcow2 } from '../drivers/format/qcow2/make-empty.js';
import { Qcow2Node } from '../drivers/format/qcow2/qcow2-node.js';

/**
 * Makes an image read entirely from its backing file again (QEMU's bdrv_make_empty), for the
 * formats that can: ENOTSUP for the rest, which a commit takes as "leave it as it is".
 */
export async function makeEmpty(node: BlockNode): Promise<void> {
  if (node instanceof Qcow2Node) return makeEmptyQcow2(node);
  throw new NotSupportedError(`${node.driver} images cannot be emptied`, { node: node.nodeName, op: 'make-empty' });
}
