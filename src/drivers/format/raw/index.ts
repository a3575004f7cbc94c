import { BlockError } from '../../../core/errors.js';
import type { DriverDef, NodeSpec } from '../../../registry/driver.js';
import { boolOption, numberOption, stringOption } from '../../../registry/options.js';
import { RawNode } from './raw-node.js';
import { measureRaw } from './measure.js';
import { createFile } from '../../protocol/file/create.js';

export { RawNode } from './raw-node.js';

export const rawDriver: DriverDef = {
  name: 'raw',
  kind: 'format',
  options: ['file', 'offset', 'size', 'probed'],
  // Anything is a raw image; every other format outbids this.
  probe: () => 1,
  createOptions: [{ name: 'size', type: 'size' }, { name: 'preallocation', type: 'string' }],
  async create(req) {
    const prealloc = req.options.preallocation ?? 'off';
    if (prealloc !== 'off' && prealloc !== 'falloc' && prealloc !== 'full') {
      throw new BlockError('EINVAL', `${req.filename}: invalid parameter value: preallocation=${prealloc} (off, falloc or full)`, { op: 'create' });
    }
    await createFile(req.filename, req.size, prealloc);
  },
  measure: measureRaw,
  async open(spec, ctx) {
    if (spec.file === undefined) throw new BlockError('EINVAL', "raw: the 'file' child is required", { op: 'open' });
    const file = await ctx.openChild(spec.file as NodeSpec | string, 'file');
    try {
      return new RawNode(file, {
        offset: numberOption(spec, 'offset'),
        size: numberOption(spec, 'size'),
        readOnly: boolOption(spec, 'read-only') ?? ctx.options.readOnly ?? false,
        nodeName: stringOption(spec, 'node-name'),
        probedWith: spec.probed === true ? (head) => ctx.probeFormat(head) : undefined,
      });
    } catch (err) {
      await file.close();
      throw err;
    }
  },
};
