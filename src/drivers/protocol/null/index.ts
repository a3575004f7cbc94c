import type { DriverDef } from '../../../registry/driver.js';
import { boolOption, numberOption, stringOption } from '../../../registry/options.js';
import { NullNode } from './null-node.js';

export { NullNode } from './null-node.js';

const GiB = 1024 ** 3;

export const nullDriver: DriverDef = {
  name: 'null',
  aliases: ['null-co'],
  kind: 'protocol',
  options: ['size', 'read-zeroes', 'filename'],
  async open(spec, ctx) {
    return new NullNode({
      // QEMU's null-co defaults to 1 GiB.
      size: numberOption(spec, 'size') ?? GiB,
      readOnly: boolOption(spec, 'read-only') ?? ctx.options.readOnly ?? false,
      nodeName: stringOption(spec, 'node-name'),
    });
  },
};
