import type { DriverDef } from '../../../registry/driver.js';
import { boolOption, numberOption, stringOption } from '../../../registry/options.js';
import { MemoryNode } from './memory-node.js';

export { MemoryNode, MAX_MEMORY_SIZE } from './memory-node.js';

export const memoryDriver: DriverDef = {
  name: 'memory',
  kind: 'protocol',
  options: ['size'],
  async open(spec, ctx) {
    return new MemoryNode({
      size: numberOption(spec, 'size') ?? 0,
      readOnly: boolOption(spec, 'read-only') ?? ctx.options.readOnly ?? false,
      nodeName: stringOption(spec, 'node-name'),
    });
  },
};
