import type { Rng } from './workload.js';

/**
 * A uniform integer in [lo, hi] from one 32-bit draw (hi - lo < 2^32). Rng.int combines two
 * draws into a number past a double's 53 bits; the low bits it loses make ranges whose length
 * has a large power of two in it (128 clusters, 384 clusters) come out as a few values only.
 */
export function uniformInt(rng: Rng, lo: number, hi: number): number {
  return lo + (rng.next() % (hi - lo + 1));
}
