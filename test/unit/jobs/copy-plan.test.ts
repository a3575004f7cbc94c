import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planCopy, type CopyRequest, type PlanOptions } from '../../../src/jobs/copy-plan.js';
import { ScriptedSource } from './copy-nodes.js';

const KiB = 1024;

async function plan(opts: PlanOptions): Promise<[string, number, number][]> {
  const out: CopyRequest[] = [];
  for await (const r of planCopy(opts)) out.push(r);
  assert.deepEqual(out.map((r) => r.seq), out.map((_, i) => i), 'sequence numbers count up');
  return out.map((r) => [r.kind, r.offset, r.length]);
}

test('runs of one kind merge across extents and block-status batches; data is cut at buffer-size boundaries', async () => {
  // Twelve 3 KiB data extents reported three per call, then zeros.
  const src = new ScriptedSource([...Array.from({ length: 12 }, () => ({ byte: 1, length: 3 * KiB })), { zero: 100 * KiB }], { batch: 3 });
  assert.deepEqual(await plan({ sources: [src], maxData: 16 * KiB }), [
    ['data', 0, 16 * KiB], ['data', 16 * KiB, 16 * KiB], ['data', 32 * KiB, 4 * KiB], ['zero', 36 * KiB, 100 * KiB],
  ]);
  assert.ok(src.statusCalls >= 5);
});

test('a data run starting off a boundary ends its first request on one', async () => {
  const src = new ScriptedSource([{ zero: 5 * KiB }, { byte: 1, length: 40 * KiB }]);
  assert.deepEqual(await plan({ sources: [src], maxData: 16 * KiB }), [
    ['zero', 0, 5 * KiB], ['data', 5 * KiB, 11 * KiB], ['data', 16 * KiB, 16 * KiB], ['data', 32 * KiB, 13 * KiB],
  ]);
});

test('zero runs are cut at maxZero; sources follow one another in the target', async () => {
  const a = new ScriptedSource([{ zero: 10 * KiB }, { byte: 1, length: 1 * KiB }]);
  const b = new ScriptedSource([{ byte: 2, length: 1 * KiB }, { zero: 3 * KiB }]);
  const reqs: CopyRequest[] = [];
  for await (const r of planCopy({ sources: [a, b], maxData: 64 * KiB, maxZero: 4 * KiB })) reqs.push(r);
  assert.deepEqual(reqs.map((r) => [r.kind, r.offset, r.length, r.source === a ? 'a' : 'b', r.sourceOffset]), [
    ['zero', 0, 4 * KiB, 'a', 0], ['zero', 4 * KiB, 4 * KiB, 'a', 4 * KiB], ['zero', 8 * KiB, 2 * KiB, 'a', 8 * KiB],
    ['data', 10 * KiB, 1 * KiB, 'a', 10 * KiB],
    ['data', 11 * KiB, 1 * KiB, 'b', 0], ['zero', 12 * KiB, 3 * KiB, 'b', 1 * KiB],
  ]);
});

test('for an overlay target, the source backing chain is left alone and zeros split at the target backing end', async () => {
  const src = new ScriptedSource([{ byte: 1, length: 4 * KiB }, { zero: 4 * KiB, depth: 1 }, { zero: 8 * KiB, present: false }]);
  assert.deepEqual(await plan({ sources: [src], maxData: 64 * KiB, targetBacking: { size: 12 * KiB } }), [
    ['data', 0, 4 * KiB], ['backing', 4 * KiB, 4 * KiB], ['zero', 8 * KiB, 4 * KiB], ['backing', 12 * KiB, 4 * KiB],
  ]);
  // Without an overlay target, the same image is data and zeros.
  assert.deepEqual(await plan({ sources: [src], maxData: 64 * KiB }), [['data', 0, 4 * KiB], ['zero', 4 * KiB, 12 * KiB]]);
});

test('a block-status failure names the offset', async () => {
  const src = new ScriptedSource([{ byte: 1, length: 8 * KiB }, { zero: 8 * KiB }], { batch: 1 });
  const broken = Object.assign(src, { blockStatusList: async (offset: number, max: number) => {
    if (offset > 0) throw Object.assign(new Error('Input/output error'), { code: 'EIO' });
    return [{ offset, length: Math.min(max, 8 * KiB), data: true, zero: false, present: true, depth: 0 }];
  } });
  await assert.rejects(plan({ sources: [broken], maxData: 64 * KiB }), /^BlockError: error while reading block status at offset 8192: Input\/output error$/);
});

test('a data request names its place in a host file only when all of it lies there in one piece, never compressed', async () => {
  // Four 8 KiB data extents: host-contiguous pairs [0, 16k) and [16k, 32k) far apart, then a
  // compressed one, then one with no host offset.
  const src = new ScriptedSource([...Array.from({ length: 6 }, () => ({ byte: 1, length: 8 * KiB }))]);
  const host = [100 * KiB, 108 * KiB, 500 * KiB, 508 * KiB, 900 * KiB, undefined];
  src.extentList.forEach((e, i) => {
    if (host[i] !== undefined) Object.assign(e, { hostOffset: host[i], hostFile: 'img' });
    if (i === 4) e.compressed = true;
  });
  const reqs: CopyRequest[] = [];
  for await (const r of planCopy({ sources: [src], maxData: 16 * KiB })) reqs.push(r);
  assert.deepEqual(reqs.map((r) => [r.offset, r.length, r.host]), [
    [0, 16 * KiB, { file: 'img', offset: 100 * KiB }],
    [16 * KiB, 16 * KiB, { file: 'img', offset: 500 * KiB }],
    [32 * KiB, 16 * KiB, undefined],
  ]);
  // Requests across a host discontinuity (or into a compressed extent) have none; one inside a piece keeps its own.
  const reqs8: CopyRequest[] = [];
  for await (const r of planCopy({ sources: [src], maxData: 12 * KiB })) reqs8.push(r);
  assert.deepEqual(reqs8.map((r) => [r.offset, r.length, r.host?.offset]), [
    [0, 12 * KiB, 100 * KiB], [12 * KiB, 12 * KiB, undefined], [24 * KiB, 12 * KiB, undefined], [36 * KiB, 12 * KiB, undefined],
  ]);
});
