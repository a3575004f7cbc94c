import assert from 'node:assert/strict';
import { test } from 'node:test';
import { clusterPlan } from '../../../src/jobs/cluster-plan.js';
import { planCopy, type CopyRequest, type PlanOptions } from '../../../src/jobs/copy-plan.js';
import { SourceSpan } from '../../../src/jobs/source-span.js';
import { ScriptedSource } from './copy-nodes.js';

const KiB = 1024;
const CS = 16 * KiB;

async function plan(opts: PlanOptions, maxZero = 1024 * KiB): Promise<[string, number, number][]> {
  const out: CopyRequest[] = [];
  const span = new SourceSpan(opts.sources);
  for await (const r of clusterPlan(planCopy(opts), { span, clusterSize: CS, maxData: opts.maxData, maxZero })) out.push(r);
  assert.deepEqual(out.map((r) => r.seq), out.map((_, i) => i), 'sequence numbers count up');
  for (const r of out) {
    const at = span.locate(r.offset);
    assert.ok(r.source === at.source && r.sourceOffset === at.sourceOffset, `request at ${r.offset} names where it starts`);
  }
  return out.map((r) => [r.kind, r.offset, r.length]);
}

test('every request covers whole clusters; a cluster mixing kinds becomes data, one of a single kind keeps it', async () => {
  const src = new ScriptedSource([
    { byte: 1, length: 3 * KiB }, // data and zeros share cluster 0: data
    { zero: 3 * CS + 5 * KiB }, // whole zero clusters 1, 2; cluster 3 shares with data
    { byte: 2, length: 2 * CS }, // clusters 3 (mixed), 4, and part of 5
    { zero: 37 * KiB }, // the rest of 5, whole zero 6, and into 7
    { zero: 3 * KiB, depth: 1 }, // a zero run from the backing file, still zero: cluster 7 stays zero
  ]);
  assert.equal(src.size, 8 * CS);
  assert.deepEqual(await plan({ sources: [src], maxData: 2 * CS }), [
    ['data', 0, CS], ['zero', CS, 2 * CS], ['data', 3 * CS, CS], ['data', 4 * CS, 2 * CS], ['zero', 6 * CS, 2 * CS],
  ]);
});

test('data runs are cut at maxData boundaries, zero runs at maxZero ones; the last cluster may be short', async () => {
  const src = new ScriptedSource([{ byte: 1, length: 5 * CS }, { zero: 4 * CS + 1536 }]);
  assert.deepEqual(await plan({ sources: [src], maxData: 2 * CS }, 2 * CS), [
    ['data', 0, 2 * CS], ['data', 2 * CS, 2 * CS], ['data', 4 * CS, CS], ['zero', 5 * CS, CS], ['zero', 6 * CS, 2 * CS], ['zero', 8 * CS, CS + 1536],
  ]);
  // Data in the short last cluster makes it data; zeros before it stay zero.
  const tail = new ScriptedSource([{ zero: 2 * CS }, { byte: 3, length: 700 }]);
  assert.deepEqual(await plan({ sources: [tail], maxData: 2 * CS }), [['zero', 0, 2 * CS], ['data', 2 * CS, 700]]);
});

test('for an overlay target, what the source leaves to its backing file stays with it, unless a cluster mixes it with more', async () => {
  const src = new ScriptedSource([
    { zero: 2 * CS, depth: 1 }, // the source's backing file has it, so the target's holds it
    { byte: 1, length: 4 * KiB }, // one cluster mixing data and the backing file: data, read through the source
    { zero: CS - 4 * KiB, depth: 1 },
    { zero: CS, depth: 1 },
  ]);
  assert.deepEqual(await plan({ sources: [src], maxData: 4 * CS, targetBacking: { size: 4 * CS } }), [
    ['backing', 0, 2 * CS], ['data', 2 * CS, CS], ['backing', 3 * CS, CS],
  ]);
});

test('a cluster across two sources is one data request, read from both', async () => {
  const a = new ScriptedSource([{ byte: 1, length: 10 * KiB }]);
  const b = new ScriptedSource([{ zero: 6 * KiB }, { zero: 2 * CS }, { byte: 2, length: 3 * KiB }]);
  assert.deepEqual(await plan({ sources: [a, b], maxData: 4 * CS }), [['data', 0, CS], ['zero', CS, 2 * CS], ['data', 3 * CS, 3 * KiB]]);
  const span = new SourceSpan([a, b]);
  const buf = new Uint8Array(CS);
  await span.read(0, buf);
  assert.deepEqual([buf[0], buf[10 * KiB - 1], buf[10 * KiB], buf[CS - 1]], [1, 1, 0, 0]);
});
