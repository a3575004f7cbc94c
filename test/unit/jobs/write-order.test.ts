import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WriteOrder } from '../../../src/jobs/write-order.js';

test('turns are given in sequence, whatever order they are asked for', async () => {
  const order = new WriteOrder();
  const log: number[] = [];
  const take = async (seq: number) => {
    assert.equal(await order.turn(seq), true);
    log.push(seq);
    order.done(seq);
  };
  await Promise.all([take(3), take(1), take(2), take(0)]);
  assert.deepEqual(log, [0, 1, 2, 3]);
});

test('abort releases every waiter with false', async () => {
  const order = new WriteOrder();
  const waiting = [order.turn(2), order.turn(1)];
  order.abort();
  assert.deepEqual(await Promise.all(waiting), [false, false]);
  assert.equal(await order.turn(0), false);
});
