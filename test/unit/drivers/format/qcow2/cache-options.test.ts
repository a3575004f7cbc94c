/**
 * How the cache options size the caches, following QEMU 7.2's read_cache_sizes() and
 * qcow2_update_options_prepare(). QEMU does not print the sizes it picks, so these are checked
 * against QEMU's rules as written; the error messages are checked against qemu-img itself in
 * test/interop/drivers/qcow2/cache-options.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { resolveCacheSizes, type CacheOptions } from '../../../../../src/drivers/format/qcow2/cache-options.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const C64 = { clusterSize: 64 * KiB, l2EntryBytes: 8 };

const sizes = (o: CacheOptions, size: number, image = C64) => resolveCacheSizes(o, { ...image, size });

describe('resolveCacheSizes', () => {
  it('by default covers the whole image with whole-table entries, and keeps 4 refcount blocks', () => {
    // 1 GiB of 64 KiB clusters: 16384 L2 entries, 128 KiB of L2 tables, two tables.
    assert.deepEqual(sizes({}, GiB), { l2EntrySize: 64 * KiB, l2Entries: 2, refcountEntries: 4, cleanInterval: 600 });
    // 64 GiB: 8 MiB of tables, within the 32 MiB default.
    assert.deepEqual(sizes({}, 64 * GiB), { l2EntrySize: 64 * KiB, l2Entries: 128, refcountEntries: 4, cleanInterval: 600 });
  });

  it('uses 4 KiB slices when 32 MiB cannot cover the image', () => {
    // 1 TiB: 128 MiB of L2 tables.
    assert.deepEqual(sizes({}, TiB), { l2EntrySize: 4 * KiB, l2Entries: 8192, refcountEntries: 4, cleanInterval: 600 });
    // Clusters below 4 KiB keep whole-cluster entries.
    assert.equal(sizes({}, TiB, { clusterSize: 512, l2EntryBytes: 8 }).l2EntrySize, 512);
  });

  it('counts 16-byte entries with extended L2', () => {
    assert.equal(sizes({}, 64 * GiB, { clusterSize: 64 * KiB, l2EntryBytes: 16 }).l2Entries, 256);
  });

  it('never gives the L2 cache more than the image can use, nor fewer than two entries', () => {
    assert.equal(sizes({ l2CacheSize: GiB }, GiB).l2Entries, 2);
    assert.equal(sizes({ l2CacheSize: 0 }, 64 * GiB).l2Entries, 2);
    // An explicit small cache switches to 4 KiB slices too, unless the entry size is given.
    assert.deepEqual(sizes({ l2CacheSize: MiB }, 64 * GiB).l2EntrySize, 4 * KiB);
    assert.deepEqual(sizes({ l2CacheSize: MiB }, 64 * GiB).l2Entries, 256);
    assert.deepEqual(sizes({ l2CacheSize: MiB, l2CacheEntrySize: 64 * KiB }, 64 * GiB).l2Entries, 16);
  });

  it('honours l2-cache-entry-size, and refuses what is not a power of two from 512 to the cluster size', () => {
    assert.equal(sizes({ l2CacheEntrySize: 512 }, GiB).l2Entries, 256);
    for (const bad of [256, 1000, 128 * KiB, 0]) {
      assert.throws(() => sizes({ l2CacheEntrySize: bad }, GiB), {
        code: 'EINVAL', message: 'L2 cache entry size must be a power of two between 512 and the cluster size (65536)',
      });
    }
  });

  it('splits cache-size as QEMU does', () => {
    // Enough for all L2 tables plus the minimum refcount cache: L2 gets what it can use.
    // (1 GiB: 128 KiB of L2 tables; the refcount cache gets 2 MiB - 128 KiB, 30 blocks.)
    assert.deepEqual(sizes({ cacheSize: 2 * MiB }, GiB), { l2EntrySize: 64 * KiB, l2Entries: 2, refcountEntries: 30, cleanInterval: 600 });
    // Not enough: refcounts get their minimum, L2 the rest (in 4 KiB slices, as it cannot cover the image).
    assert.deepEqual(sizes({ cacheSize: MiB }, 64 * GiB), { l2EntrySize: 4 * KiB, l2Entries: 192, refcountEntries: 4, cleanInterval: 600 });
    // One of the two given: the other gets the rest.
    assert.deepEqual(sizes({ cacheSize: 2 * MiB, l2CacheSize: MiB }, 64 * GiB).refcountEntries, 16);
    assert.deepEqual(sizes({ cacheSize: 2 * MiB, refcountCacheSize: 1536 * KiB }, 64 * GiB).l2Entries, 128);
  });

  it('refuses conflicting cache sizes with QEMU\'s messages', () => {
    assert.throws(() => sizes({ cacheSize: MiB, l2CacheSize: 512 * KiB, refcountCacheSize: 256 * KiB }, GiB),
      { code: 'EINVAL', message: 'cache-size, l2-cache-size and refcount-cache-size may not be set at the same time' });
    assert.throws(() => sizes({ cacheSize: MiB, l2CacheSize: 2 * MiB }, GiB), { message: 'l2-cache-size may not exceed cache-size' });
    assert.throws(() => sizes({ cacheSize: MiB, refcountCacheSize: 2 * MiB }, GiB), { message: 'refcount-cache-size may not exceed cache-size' });
  });

  it('takes cache-clean-interval in seconds, 0 for never, and refuses what QEMU finds too big', () => {
    assert.equal(sizes({ cacheCleanInterval: 0 }, GiB).cleanInterval, 0);
    assert.equal(sizes({ cacheCleanInterval: 2 ** 32 - 1 }, GiB).cleanInterval, 2 ** 32 - 1);
    for (const bad of [2 ** 32, -1]) {
      assert.throws(() => sizes({ cacheCleanInterval: bad }, GiB), { code: 'EINVAL', message: 'Cache clean interval too big' });
    }
  });
});
