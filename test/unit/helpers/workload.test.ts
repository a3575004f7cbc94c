import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Rng } from '../../helpers/workload.js';

/*
 * The property tests' random source: if it is skewed, a test that reports "0 mismatches over
 * 10,000 sequences" has tried far fewer cases than it says. Each check below failed on the
 * generator before its fix, which returned 0 for nearly every even span.
 */
describe('Rng.int', () => {
  const draws = 20_000;

  for (const span of [2, 3, 16, 100, 4096]) {
    it(`spreads over a span of ${span}: every value drawn, each within 25 % of its share`, () => {
      const rng = new Rng(7);
      const counts = new Array<number>(span).fill(0);
      const n = Math.max(draws, span * 200);
      for (let i = 0; i < n; i++) counts[rng.int(0, span - 1)]!++;
      const share = n / span;
      for (const [value, count] of counts.entries()) assert.ok(Math.abs(count - share) < share / 4, `value ${value}: ${count} of ${n}`);
    });
  }

  it('gives odd and unaligned offsets in a span wider than 2^32', () => {
    const rng = new Rng(9);
    let odd = 0;
    let misaligned = 0;
    for (let i = 0; i < draws; i++) {
      const v = rng.int(0, 2 ** 40 - 1);
      assert.ok(v >= 0 && v < 2 ** 40 && Number.isInteger(v));
      if (v % 2) odd++;
      if (v % 4096) misaligned++;
    }
    assert.ok(Math.abs(odd - draws / 2) < draws / 20, `${odd} odd of ${draws}`);
    assert.ok(misaligned > draws * 0.99, `${misaligned} not 4 KiB aligned of ${draws}`);
  });

  it('stays inside [lo, hi] at the ends', () => {
    const rng = new Rng(11);
    const seen = new Set<number>();
    for (let i = 0; i < 1000; i++) seen.add(rng.int(-3, -1));
    assert.deepEqual([...seen].sort(), [-1, -2, -3]);
    assert.throws(() => rng.int(5, 4), RangeError);
  });
});
