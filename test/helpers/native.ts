import type { TestContext } from 'node:test';
import { nativeStatus } from '../../src/native/index.js';

/**
 * For tests that need the native addon (holes, fallocate): true when it is loaded. Otherwise the
 * test is skipped with the reason, unless VDISK_REQUIRE_ORACLES=1, when it fails.
 */
export function needNative(t: TestContext): boolean {
  if (nativeStatus.loaded) return true;
  const why = `native addon not loaded (${nativeStatus.reason ?? 'unknown reason'})`;
  if (process.env.VDISK_REQUIRE_ORACLES === '1') throw new Error(`${why}, and VDISK_REQUIRE_ORACLES=1`);
  t.skip(why);
  return false;
}
