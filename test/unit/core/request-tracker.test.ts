import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { RequestTracker } from '../../../src/core/request-tracker.js';
import { nextTurn } from '../../helpers/test-nodes.js';

type Held = { release(): void };

/** Starts begin() and reports whether it has been granted after the event loop turned once. */
async function grantedSoon(p: Promise<Held>): Promise<boolean> {
  let granted = false;
  void p.then(() => (granted = true));
  await nextTurn();
  return granted;
}

test('overlapping non-serialising requests run together', async () => {
  const t = new RequestTracker();
  const a = await t.begin(0, 4096, false);
  assert.equal(await grantedSoon(t.begin(100, 200, false)), true);
  assert.equal(t.size, 2);
  a.release();
});

test('a serialising request waits for an overlapping earlier one, of either kind', async () => {
  for (const firstSerialising of [false, true]) {
    const t = new RequestTracker();
    const a = await t.begin(0, 4096, firstSerialising);
    const b = t.begin(4095, 8192, true);
    assert.equal(await grantedSoon(b), false);
    a.release();
    (await b).release();
    assert.equal(t.size, 0);
  }
});

test('a non-serialising request waits for an overlapping serialising one', async () => {
  const t = new RequestTracker();
  const a = await t.begin(0, 4096, true);
  const b = t.begin(10, 20, false);
  assert.equal(await grantedSoon(b), false);
  a.release();
  assert.equal(await grantedSoon(b), true);
});

test('adjacent and disjoint ranges never conflict', async () => {
  const t = new RequestTracker();
  const held = [await t.begin(0, 4096, true)];
  for (const [s, e] of [[4096, 8192], [8192, 8193], [100_000, 200_000]]) {
    const p = t.begin(s!, e!, true);
    assert.equal(await grantedSoon(p), true, `[${s}, ${e})`);
    held.push(await p);
  }
  for (const h of held) h.release();
  assert.equal(t.size, 0);
});

test('waiters are served in arrival order and release is idempotent', async () => {
  const t = new RequestTracker();
  const order: string[] = [];
  const first = await t.begin(0, 10, true);
  const run = (name: string, s: number, e: number, ser: boolean) => t.begin(s, e, ser).then(async (h) => {
    order.push(name);
    await nextTurn();
    h.release();
    h.release();
  });
  const all = [run('b', 5, 15, true), run('c', 0, 10, false), run('d', 12, 20, true)];
  first.release();
  await Promise.all(all);
  // c overlaps b (serialising) and was registered after it; d overlaps b too.
  assert.deepEqual(order.slice(0, 1), ['b']);
  assert.deepEqual(order.slice(1).sort(), ['c', 'd']);
  assert.equal(t.size, 0);
});

test('drain resolves once every request in flight now has finished', async () => {
  const t = new RequestTracker();
  await t.drain();
  const a = await t.begin(0, 10, true);
  const b = t.begin(0, 10, true);
  let drained = false;
  const d = t.drain().then(() => (drained = true));
  await nextTurn();
  assert.equal(drained, false);
  a.release();
  await nextTurn();
  assert.equal(drained, false, 'drain must also wait for the request that was waiting');
  (await b).release();
  await d;
  assert.equal(t.size, 0);
});

// Random workloads: every request is eventually granted (no deadlock), and no two conflicting
// requests ever hold the tracker at once.
test('random workloads never deadlock and never run conflicting requests together', async () => {
  const reqArb = fc.record({
    start: fc.integer({ min: 0, max: 60 }),
    len: fc.integer({ min: 1, max: 20 }),
    serialising: fc.boolean(),
    hold: fc.integer({ min: 0, max: 3 }),
    delay: fc.integer({ min: 0, max: 3 }),
  });
  await fc.assert(fc.asyncProperty(fc.array(reqArb, { minLength: 1, maxLength: 25 }), async (reqs) => {
    const t = new RequestTracker();
    const running = new Set<{ start: number; end: number; serialising: boolean }>();
    await Promise.all(reqs.map(async (r) => {
      for (let i = 0; i < r.delay; i++) await nextTurn();
      const me = { start: r.start, end: r.start + r.len, serialising: r.serialising };
      const h = await t.begin(me.start, me.end, me.serialising);
      for (const o of running) {
        const overlap = o.start < me.end && me.start < o.end;
        assert.ok(!(overlap && (o.serialising || me.serialising)), `conflict: ${JSON.stringify(o)} and ${JSON.stringify(me)}`);
      }
      running.add(me);
      for (let i = 0; i < r.hold; i++) await nextTurn();
      running.delete(me);
      h.release();
    }));
    assert.equal(t.size, 0);
  }), { numRuns: 300 });
});

// ---- beginPieces: per-cluster serialisation ------------------------------------------------

const G = 100;

test('beginPieces without conflicts is one piece that may run at once', () => {
  const t = new RequestTracker();
  const pieces = t.beginPieces(0, 4 * G, G);
  assert.equal(pieces.length, 1);
  assert.deepEqual([pieces[0]!.start, pieces[0]!.end, pieces[0]!.ready], [0, 4 * G, undefined]);
  pieces[0]!.ticket.release();
  assert.equal(t.size, 0);
});

test('beginPieces waits only where an earlier request overlaps, widened to whole granules', async () => {
  const t = new RequestTracker();
  const write = await t.begin(G + 10, G + 20, false);
  const pieces = t.beginPieces(0, 4 * G, G);
  assert.deepEqual(pieces.map((p) => [p.start, p.end, p.ready !== undefined]), [[0, G, false], [G, 2 * G, true], [2 * G, 4 * G, false]]);
  // Until the write is done, a plain request overlapping a free piece waits for that piece only.
  assert.equal(await grantedSoon(t.begin(3 * G, 3 * G + 1, false)), false);
  let ready = false;
  void pieces[1]!.ready!.then(() => (ready = true));
  await nextTurn();
  assert.equal(ready, false);
  write.release();
  await nextTurn();
  assert.equal(ready, true);
  for (const p of pieces) p.ticket.release();
});

test('beginPieces of a request partly overlapping another copy waits only for the shared clusters', async () => {
  const t = new RequestTracker();
  const first = t.beginPieces(0, 4 * G, G);
  const second = t.beginPieces(2 * G, 6 * G, G);
  assert.deepEqual(second.map((p) => [p.start, p.end, p.ready !== undefined]), [[2 * G, 4 * G, true], [4 * G, 6 * G, false]]);
  for (const p of [...first, ...second]) p.ticket.release();
  assert.equal(t.size, 0);
});

test('beginPieces clamps cuts to a short last granule', () => {
  const t = new RequestTracker();
  const held = t.tryBegin(2 * G + 5, 2 * G + 30, false)!;
  const pieces = t.beginPieces(0, 2 * G + 40, G);
  assert.deepEqual(pieces.map((p) => [p.start, p.end, p.ready !== undefined]), [[0, 2 * G, false], [2 * G, 2 * G + 40, true]]);
  held.release();
  for (const p of pieces) p.ticket.release();
});

// Random workloads mixing whole requests and pieces: no deadlock, and no two conflicting holders at once.
test('random workloads with pieces never deadlock and never run conflicting requests together', async () => {
  const reqArb = fc.record({
    start: fc.integer({ min: 0, max: 12 }),
    len: fc.integer({ min: 1, max: 6 }),
    kind: fc.constantFrom('plain', 'serialising', 'pieces'),
    hold: fc.integer({ min: 0, max: 3 }),
    delay: fc.integer({ min: 0, max: 3 }),
  });
  await fc.assert(fc.asyncProperty(fc.array(reqArb, { minLength: 1, maxLength: 25 }), async (reqs) => {
    const t = new RequestTracker();
    const running = new Set<{ start: number; end: number; serialising: boolean }>();
    const hold = async (me: { start: number; end: number; serialising: boolean }, ticket: Held, turns: number) => {
      for (const o of running) {
        const overlap = o.start < me.end && me.start < o.end;
        assert.ok(!(overlap && (o.serialising || me.serialising)), `conflict: ${JSON.stringify(o)} and ${JSON.stringify(me)}`);
      }
      running.add(me);
      for (let i = 0; i < turns; i++) await nextTurn();
      running.delete(me);
      ticket.release();
    };
    await Promise.all(reqs.map(async (r) => {
      for (let i = 0; i < r.delay; i++) await nextTurn();
      const start = r.start * 4;
      const end = (r.start + r.len) * 4;
      if (r.kind === 'pieces') {
        await Promise.all(t.beginPieces(start, end, 4).map(async (p) => {
          if (p.ready) await p.ready;
          await hold({ start: p.start, end: p.end, serialising: true }, p.ticket, r.hold);
        }));
        return;
      }
      // Plain requests may cover part of a granule.
      const me = { start: start + (r.kind === 'plain' ? 1 : 0), end, serialising: r.kind === 'serialising' };
      await hold(me, await t.begin(me.start, me.end, me.serialising), r.hold);
    }));
    assert.equal(t.size, 0);
  }), { numRuns: 300 });
});
