import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import { FilterNode } from '../../../core/filter-node.js';

/**
 * How many backing hops below `top` the node named `name` sits (filters on the way count none,
 * as block status counts depth). QEMU's messages where it has them; a node elsewhere in the graph
 * is refused plainly, where QEMU would crash or hang.
 */
export function bottomDepth(top: BlockNode, name: string): number {
  let depth = 0;
  for (let node: BlockNode | undefined = top; node;) {
    if (node.nodeName === name) {
      if (node instanceof FilterNode) throw invalid(`Bottom node '${name}' is a filter`);
      return depth;
    }
    if (node instanceof FilterNode) {
      node = node.child;
    } else {
      node = node.backing;
      depth++;
    }
  }
  if (!inGraph(top, name)) throw invalid(`Bottom node '${name}' not found`);
  throw invalid(`Bottom node '${name}' is not in the backing chain of '${top.nodeName}'`);
}

function inGraph(node: BlockNode, name: string): boolean {
  if (node.nodeName === name) return true;
  for (const child of node.children.values()) if (inGraph(child, name)) return true;
  return false;
}

function invalid(message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'open' });
}
