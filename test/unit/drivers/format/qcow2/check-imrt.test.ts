import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InMemoryRefcounts } from '../../../../../src/drivers/format/qcow2/check-imrt.js';

describe('qcow2 check: the in-memory refcount table', () => {
  it('counts up to what the refcount width holds, and reports each reference beyond as an overflow', () => {
    const one = new InMemoryRefcounts(4, 1);
    assert.equal(one.max, 1);
    assert.equal(one.add(2, 1), 0);
    assert.equal(one.add(2, 3), 3);
    assert.equal(one.get(2), 1);
    const sixteen = new InMemoryRefcounts(4, 16);
    assert.equal(sixteen.add(0, 65534), 0);
    assert.equal(sixteen.add(0, 5), 4);
    assert.equal(sixteen.get(0), 65535);
  });

  it('keeps 64-bit counts exact where a double is', () => {
    const wide = new InMemoryRefcounts(1, 64);
    wide.set(0, 2 ** 40 + 1);
    assert.equal(wide.add(0, 1), 0);
    assert.equal(wide.get(0), 2 ** 40 + 2);
  });

  it('grows to cover references and allocations past the end, keeping what it counted', () => {
    const refs = new InMemoryRefcounts(2, 16);
    refs.add(1, 2);
    assert.equal(refs.get(1000), 0);
    assert.equal(refs.length, 2);
    refs.add(1000, 1);
    assert.equal(refs.length, 1001);
    assert.equal(refs.get(1), 2);
    assert.equal(refs.get(1000), 1);
  });

  it('allocates the first run of free clusters from a hint, appending when none is long enough', () => {
    const refs = new InMemoryRefcounts(8, 16);
    for (const c of [0, 1, 3, 6]) refs.set(c, 1);
    assert.equal(refs.allocate(1, 0), 2);
    assert.equal(refs.allocate(2, 0), 4);
    assert.equal(refs.allocate(1, 0), 7);
    // Nothing free is left inside: the run starts at the end.
    assert.equal(refs.allocate(2, 0), 8);
    assert.equal(refs.length, 10);
    // A free run that reaches the end continues past it.
    refs.set(9, 0);
    assert.equal(refs.allocate(3, 0), 9);
    assert.deepEqual([9, 10, 11].map((c) => refs.get(c)), [1, 1, 1]);
    // The hint is a floor.
    refs.set(2, 0);
    assert.equal(refs.allocate(1, 3), 12);
    assert.equal(refs.firstFree(0), 2);
  });
});
