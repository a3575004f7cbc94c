import { BlockError } from '../../../core/errors.js';
import type { NodeSpec } from '../../../registry/driver.js';
import { sizeOption } from '../../../registry/options.js';
import type { CacheOptions } from './cache-options.js';

/*
 * QEMU's qcow2 runtime options (qcow2_runtime_opts) as a node spec gives them: typed from JSON,
 * or strings from --image-opts / -o, parsed as QEMU parses them so the same option strings work
 * for both tools. Values are checked against each other and the image later (cache-options.ts).
 */

/** qemu_opt_get_number: an unsigned integer; "-1" wraps around to a huge one, as strtoull does. */
function numberOption(spec: NodeSpec, key: string): number | undefined {
  const v = spec[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (typeof v === 'string' && /^\s*[-+]?\d+$/.test(v)) return Number(v);
  throw new BlockError('EINVAL', `Parameter '${key}' expects a number`, { op: 'open' });
}

export function cacheOptions(spec: NodeSpec): CacheOptions {
  return {
    cacheSize: sizeOption(spec, 'cache-size'),
    l2CacheSize: sizeOption(spec, 'l2-cache-size'),
    l2CacheEntrySize: sizeOption(spec, 'l2-cache-entry-size'),
    refcountCacheSize: sizeOption(spec, 'refcount-cache-size'),
    cacheCleanInterval: numberOption(spec, 'cache-clean-interval'),
  };
}
