import { BlockError } from '../../../core/errors.js';
import type { DriverDef, NodeSpec } from '../../../registry/driver.js';
import { boolOption, sizeOption, stringOption } from '../../../registry/options.js';
import { PreallocateNode } from './preallocate-node.js';

export { PreallocateNode } from './preallocate-node.js';

const SECTOR = 512;

/** The child as this filter needs it: a file that may grow, which no one else writes meanwhile (QEMU takes WRITE and RESIZE unshared). */
function fileChild(spec: NodeSpec | string): NodeSpec | string {
  if (typeof spec === 'string') return { driver: 'file', filename: spec, growable: true, exclusive: true };
  if (spec.driver !== undefined && spec.driver !== 'file') return spec;
  return { ...spec, driver: 'file', growable: spec.growable ?? true, exclusive: spec.exclusive ?? true };
}

/**
 * QEMU's `preallocate` filter (block/preallocate.c), for a format's file child on storage where
 * allocation is expensive: `{ driver: 'qcow2', file: { driver: 'preallocate', file: 'a.qcow2' } }`.
 */
export const preallocateDriver: DriverDef = {
  name: 'preallocate',
  kind: 'filter',
  options: ['file', 'prealloc-align', 'prealloc-size', 'growable'],
  async open(spec, ctx) {
    if (spec.file === undefined) throw new BlockError('EINVAL', "preallocate: the 'file' child is required", { op: 'open' });
    const preallocAlign = sizeOption(spec, 'prealloc-align');
    const preallocSize = sizeOption(spec, 'prealloc-size');
    const child = await ctx.openChild(fileChild(spec.file as NodeSpec | string), 'file');
    try {
      // Growing a file ahead of its data and cutting it back is a file system's trick; other
      // protocols either cannot grow or keep no holes to fill.
      if (child.driver !== 'file') {
        throw new BlockError('EINVAL', `preallocate: the filter works over a file node only, not '${child.driver}'`, { op: 'open' });
      }
      if (preallocAlign !== undefined && preallocAlign % SECTOR !== 0) {
        throw new BlockError('EINVAL', `prealloc-align parameter of preallocate filter is not aligned to ${SECTOR}`, { op: 'open' });
      }
      const fileAlign = child.limits.requestAlignment;
      if (preallocAlign !== undefined && preallocAlign % fileAlign !== 0) {
        throw new BlockError('EINVAL', `prealloc-align parameter of preallocate filter is not aligned to underlying node request alignment (${fileAlign})`, { op: 'open' });
      }
      return new PreallocateNode(child, {
        preallocAlign,
        preallocSize,
        // A format's file grows as the format writes past its end; the filter sits there.
        growable: boolOption(spec, 'growable') ?? true,
        readOnly: boolOption(spec, 'read-only') ?? ctx.options.readOnly ?? false,
        nodeName: stringOption(spec, 'node-name'),
      });
    } catch (err) {
      await child.close();
      throw err;
    }
  },
};
