import type { CacheMode } from '../drivers/protocol/file/index.js';
import type { ReflinkMode } from '../jobs/clone-plan.js';
import { lastValue, type Parsed } from './args.js';
import { UsageError } from './errors.js';
import { cacheMode } from './open-image.js';

/**
 * convert's cache modes: qemu-img's -T (sources) and -t (target), and vdisk's --cache for both
 * (each of -T and -t overrides it on its side).
 */
export function convertCache(p: Parsed): { sourceCache: CacheMode | undefined; targetCache: CacheMode | undefined } {
  const both = cacheMode(lastValue(p, 'cache'));
  return { sourceCache: cacheMode(lastValue(p, 'T')) ?? both, targetCache: cacheMode(lastValue(p, 't')) ?? both };
}

const REFLINK_MODES: readonly ReflinkMode[] = ['auto', 'always', 'never'];

/** --reflink=WHEN as cp takes it; cp's default, auto, when absent. */
export function reflinkMode(text: string | undefined): ReflinkMode {
  if (text === undefined) return 'auto';
  if (!(REFLINK_MODES as readonly string[]).includes(text)) throw new UsageError(`Invalid --reflink value '${text}': expected auto, always or never`);
  return text as ReflinkMode;
}
