import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AboveBaseView } from '../../../src/jobs/above-base.js';
import { RateLimit } from '../../../src/jobs/rate-limit.js';
import { assertBytesEqual, pattern } from '../../helpers/bytes.js';
import { ScriptedSource } from './copy-nodes.js';

const KiB = 1024;

test('what the layers above the base hold shows as the image\'s own (depth 0), the rest as backing (depth 1)', async () => {
  const src = new ScriptedSource([
    { data: pattern(4 * KiB, 1) }, // the top's data
    { zero: 4 * KiB, depth: 1 }, // an explicit zero in the layer below the top
    { zero: 4 * KiB, depth: 2 }, // the base's zeros
    { zero: 4 * KiB, depth: 2, present: false }, // nowhere
    { zero: 4 * KiB, depth: 0, present: false }, // past the backing file's end
    { zero: 4 * KiB, depth: 1 }, // neighbours alike merge
    { zero: 4 * KiB, depth: 0 },
  ]);
  const view = new AboveBaseView(src, 2);
  const list = await view.blockStatusList(0, src.size);
  assert.deepEqual(list.map((e) => [e.offset / KiB, e.length / KiB, e.depth, e.data, e.zero, e.present]), [
    [0, 4, 0, true, false, true],
    [4, 4, 0, false, true, true],
    [8, 12, 1, false, false, false],
    [20, 8, 0, false, true, true],
  ]);
  const got = new Uint8Array(src.size);
  await view.read(0, got);
  assertBytesEqual(got, src.contents(), 'reads pass through');
  await assert.rejects(view.write(0, new Uint8Array(512)), { code: 'EROFS' });
});

test('a layer above the base that is shorter than its backing file: its zeros past the end are the image\'s own', async () => {
  // The top (depth 0) has a backing file whose walk stops at its end (present false at depth 0).
  const below = new ScriptedSource([{ data: pattern(8 * KiB, 3) }]);
  const top = new ScriptedSource([{ data: pattern(4 * KiB, 4) }, { zero: 4 * KiB, depth: 0, present: false }]);
  top.children.set('backing', below);
  const list = await new AboveBaseView(top, 2).blockStatusList(0, top.size);
  assert.deepEqual(list.map((e) => [e.offset / KiB, e.length / KiB, e.depth, e.zero]), [[0, 4, 0, false], [4, 4, 0, true]]);
  // With the chain cut just above the base (no backing file there), the same is left alone.
  top.children.delete('backing');
  const cut = await new AboveBaseView(top, 1).blockStatusList(0, top.size);
  assert.deepEqual(cut.map((e) => [e.offset / KiB, e.length / KiB, e.depth]), [[0, 4, 0], [4, 4, 1]]);
});

test('reads are paced by the rate limit, known zeros are not', async () => {
  const src = new ScriptedSource([{ data: pattern(64 * KiB, 2) }, { zero: 1024 * KiB }]);
  // 200 KiB/s: 20 KiB per 100 ms slice; the first 16 KiB go at once, the rest wait their slices.
  const view = new AboveBaseView(src, 1, new RateLimit(200 * KiB));
  const started = performance.now();
  for (let pos = 0; pos < 64 * KiB; pos += 16 * KiB) await view.read(pos, new Uint8Array(16 * KiB));
  assert.ok(performance.now() - started >= 200, 'four 16 KiB reads at 20 KiB a slice take three slices at least');
  for await (const e of view.extents(0, src.size)) assert.ok(e.offset >= 0);
});

test('an unlimited rate never waits', async () => {
  const rate = new RateLimit(0);
  assert.equal(rate.limited, false);
  // Resolves in the same turn: nothing scheduled behind it.
  let done = false;
  void rate.take(1 << 30).then(() => (done = true));
  await Promise.resolve();
  assert.ok(done);
});
