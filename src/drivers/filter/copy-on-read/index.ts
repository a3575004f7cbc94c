import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import type { DriverDef, NodeSpec } from '../../../registry/driver.js';
import { enumOption, stringOption } from '../../../registry/options.js';
import { bottomDepth } from './bottom.js';
import { CopyOnReadNode, type Serialise } from './copy-on-read-node.js';

export { CopyOnReadNode, namedNode, type CopyOnReadOptions, type Serialise } from './copy-on-read-node.js';

/** Builds the filter over an open node; the node is closed again if the options are refused. */
async function build(child: BlockNode, spec: NodeSpec, implicit: boolean): Promise<CopyOnReadNode> {
  try {
    const bottom = stringOption(spec, 'bottom');
    return new CopyOnReadNode(child, {
      nodeName: stringOption(spec, 'node-name'),
      bottomDepth: bottom === undefined ? undefined : bottomDepth(child, bottom),
      serialise: enumOption<Serialise>(spec, 'serialise', ['cluster', 'request']),
      implicit,
    });
  } catch (err) {
    await child.close();
    throw err;
  }
}

/**
 * `{ driver: 'copy-on-read', file: …, bottom?: NODE-NAME }` as in QEMU, plus vdisk's
 * `serialise=cluster|request` (how copies are serialised; `request` is QEMU's way).
 */
export const copyOnReadDriver: DriverDef = {
  name: 'copy-on-read',
  kind: 'filter',
  options: ['file', 'bottom', 'serialise'],
  async open(spec, ctx) {
    if (spec.file === undefined) throw new BlockError('EINVAL', "copy-on-read: the 'file' child is required", { op: 'open' });
    // Option values are checked before the child is opened.
    stringOption(spec, 'bottom');
    enumOption(spec, 'serialise', ['cluster', 'request']);
    const child = await ctx.openChild(spec.file as NodeSpec | string, 'file');
    return build(child, spec, false);
  },
  insert: (child, spec) => build(child, spec, true),
};
