import type { DriverDef } from '../../../registry/driver.js';
import { boolOption, enumOption, numberOption, stringOption } from '../../../registry/options.js';
import { BlockError } from '../../../core/errors.js';
import { FileNode, type CacheMode } from './file-node.js';

export { FileNode } from './file-node.js';
export type { CacheMode, FileOptions } from './file-node.js';

const CACHE_MODES: readonly CacheMode[] = ['writeback', 'writethrough', 'none', 'directsync', 'unsafe'];

export const fileDriver: DriverDef = {
  name: 'file',
  aliases: ['host_device'],
  kind: 'protocol',
  options: ['filename', 'cache', 'locking', 'request-alignment', 'aio', 'exclusive', 'growable'],
  async open(spec, ctx) {
    const filename = stringOption(spec, 'filename');
    if (!filename) throw new BlockError('EINVAL', "file: the 'filename' option is required", { op: 'open' });
    const readOnly = boolOption(spec, 'read-only') ?? ctx.options.readOnly ?? false;
    return FileNode.open({
      filename,
      readOnly,
      cache: enumOption(spec, 'cache', CACHE_MODES) ?? ctx.options.cache,
      locking: enumOption(spec, 'locking', ['auto', 'on', 'off'] as const) ?? ctx.options.locking,
      requestAlignment: numberOption(spec, 'request-alignment'),
      exclusive: boolOption(spec, 'exclusive'),
      growable: boolOption(spec, 'growable'),
      nodeName: stringOption(spec, 'node-name'),
      timeout: ctx.options.fileTimeout,
    });
  },
};
