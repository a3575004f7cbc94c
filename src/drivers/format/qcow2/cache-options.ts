import { BlockError } from '../../../core/errors.js';

/** The cache options as given (bytes; seconds for the interval); absent ones take QEMU's defaults. */
export interface CacheOptions {
  /** QEMU's cache-size: L2 and refcount caches together. */
  cacheSize?: number | undefined;
  l2CacheSize?: number | undefined;
  /** Bytes per L2 cache entry: a power of two from 512 to the cluster size. */
  l2CacheEntrySize?: number | undefined;
  refcountCacheSize?: number | undefined;
  /** Drop cache entries unused for this many seconds; 0 never does. */
  cacheCleanInterval?: number | undefined;
}

/** What the caches get. */
export interface CacheSizes {
  /** Bytes per L2 cache entry (a slice of an L2 table). */
  l2EntrySize: number;
  l2Entries: number;
  /** Refcount blocks (one cluster each). */
  refcountEntries: number;
  /** Seconds; 0 for no cleaning. */
  cleanInterval: number;
}

/** QEMU covers the whole image's L2 tables up to this much by default (we do the same). */
const DEFAULT_L2_CACHE_MAX = 32 * 1024 * 1024;
/** QEMU's MIN_L2_CACHE_SIZE (entries) and MIN_REFCOUNT_CACHE_SIZE (clusters). */
const MIN_L2_ENTRIES = 2;
const MIN_REFCOUNT_ENTRIES = 4;
/** QEMU's DEFAULT_CACHE_CLEAN_INTERVAL on Linux, in seconds. */
const DEFAULT_CLEAN_INTERVAL = 600;
const INT_MAX = 2 ** 31 - 1;
const UINT_MAX = 2 ** 32 - 1;
const MIN_ENTRY_SIZE = 512;
/** What QEMU picks for the L2 entry size when the cache cannot cover the image. */
const SMALL_ENTRY_SIZE = 4096;

function invalid(message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'open' });
}

/**
 * The L2 and refcount cache sizes for an image, from the options as QEMU's read_cache_sizes()
 * and qcow2_update_options_prepare() derive them, with the same errors for conflicting or
 * impossible values: by default the L2 cache covers the whole image up to 32 MiB, and when it
 * cannot, it holds 4 KiB slices of L2 tables rather than whole tables.
 */
export function resolveCacheSizes(o: CacheOptions, image: { clusterSize: number; l2EntryBytes: number; size: number }): CacheSizes {
  const cs = image.clusterSize;
  const minRefcountBytes = MIN_REFCOUNT_ENTRIES * cs;
  const maxL2 = Math.ceil((Math.ceil(image.size / cs) * image.l2EntryBytes) / cs) * cs;
  const l2Setting = o.l2CacheSize ?? DEFAULT_L2_CACHE_MAX;
  let l2 = Math.min(maxL2, l2Setting);
  let refcount = o.refcountCacheSize ?? 0;
  if (o.cacheSize !== undefined) {
    const combined = o.cacheSize;
    if (o.l2CacheSize !== undefined && o.refcountCacheSize !== undefined) {
      throw invalid('cache-size, l2-cache-size and refcount-cache-size may not be set at the same time');
    }
    if (o.l2CacheSize !== undefined && l2Setting > combined) throw invalid('l2-cache-size may not exceed cache-size');
    if (refcount > combined) throw invalid('refcount-cache-size may not exceed cache-size');
    if (o.l2CacheSize !== undefined) {
      refcount = combined - l2;
    } else if (o.refcountCacheSize !== undefined) {
      l2 = combined - refcount;
    } else if (combined >= maxL2 + minRefcountBytes) {
      // As much as the image can use for L2 tables, the rest for refcounts.
      l2 = maxL2;
      refcount = combined - l2;
    } else {
      refcount = Math.min(combined, minRefcountBytes);
      l2 = combined - refcount;
    }
  }
  let entrySize = o.l2CacheEntrySize ?? cs;
  if (l2 < maxL2 && o.l2CacheEntrySize === undefined) entrySize = Math.min(cs, SMALL_ENTRY_SIZE);
  if (entrySize < MIN_ENTRY_SIZE || entrySize > cs || (entrySize & (entrySize - 1)) !== 0) {
    throw invalid(`L2 cache entry size must be a power of two between ${MIN_ENTRY_SIZE} and the cluster size (${cs})`);
  }
  const l2Entries = Math.max(MIN_L2_ENTRIES, Math.floor(l2 / entrySize));
  if (l2Entries > INT_MAX) throw invalid('L2 cache size too big');
  const refcountEntries = Math.max(MIN_REFCOUNT_ENTRIES, Math.floor(refcount / cs));
  if (refcountEntries > INT_MAX) throw invalid('Refcount cache size too big');
  const cleanInterval = o.cacheCleanInterval ?? DEFAULT_CLEAN_INTERVAL;
  // QEMU reads the interval as unsigned 64-bit, so "-1" is too big there as well.
  if (cleanInterval < 0 || cleanInterval > UINT_MAX) throw invalid('Cache clean interval too big');
  return { l2EntrySize: entrySize, l2Entries, refcountEntries, cleanInterval };
}
