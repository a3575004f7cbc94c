/**
 * Random concurrent operation sequences against a plain Uint8Array model (DESIGN.md §11).
 *
 * A sequence is a list of batches; the operations of one batch are issued together and touch
 * disjoint byte ranges, but are drawn mostly from a small hot zone so that they often share
 * alignment blocks: that is what exercises read-modify-write serialisation.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import type { BlockNode } from '../../src/core/block-node.js';
import type { Extent } from '../../src/core/types.js';
import { assertBytesEqual, pattern } from '../helpers/bytes.js';
import type { Stack, StackInstance, StackOpenOptions } from '../helpers/stacks.js';

export const IMAGE_SIZE = 64 * 1024;
/** Most operations land in the first HOT_BLOCKS 4 KiB blocks. */
const HOT_BLOCKS = 3;

type Range = { offset: number; length: number };
export type Op =
  | ({ kind: 'read' } & Range)
  | ({ kind: 'write'; seed: number; zeros: boolean; fua: boolean } & Range)
  | ({ kind: 'zero'; mayUnmap: boolean; fua: boolean } & Range)
  | ({ kind: 'discard' } & Range)
  | ({ kind: 'status' } & Range)
  | { kind: 'flush' };

const rangeArb = (size: number): fc.Arbitrary<Range> => fc.oneof(
  // In the hot zone, short: several of these share a block.
  { weight: 6, arbitrary: fc.record({ offset: fc.integer({ min: 0, max: HOT_BLOCKS * 4096 - 1 }), length: fc.integer({ min: 1, max: 300 }) }) },
  // Across block boundaries.
  { weight: 3, arbitrary: fc.record({ offset: fc.integer({ min: 0, max: HOT_BLOCKS * 4096 - 1 }), length: fc.integer({ min: 1, max: 9000 }) }) },
  // Anywhere, including the end of the image.
  { weight: 1, arbitrary: fc.record({ offset: fc.integer({ min: 0, max: size - 1 }), length: fc.integer({ min: 1, max: 20_000 }) }) },
).map(({ offset, length }) => ({ offset, length: Math.min(length, size - offset) }));

/** An op and how many microtask turns its issue is delayed, to vary the interleaving. */
export type TimedOp = Op & { ticks: number };

const opKindArb = (size: number): fc.Arbitrary<Op> => fc.oneof(
  { weight: 4, arbitrary: rangeArb(size).map((r) => ({ kind: 'read' as const, ...r })) },
  {
    weight: 6,
    arbitrary: fc.tuple(rangeArb(size), fc.integer({ min: 1, max: 0x7fffffff }), fc.boolean(), fc.nat(9)).map(([r, seed, fua, z]) =>
      ({ kind: 'write' as const, ...r, seed, fua, zeros: z === 0 })),
  },
  {
    weight: 2,
    arbitrary: fc.tuple(rangeArb(size), fc.boolean(), fc.boolean()).map(([r, mayUnmap, fua]) => ({ kind: 'zero' as const, ...r, mayUnmap, fua })),
  },
  { weight: 2, arbitrary: rangeArb(size).map((r) => ({ kind: 'discard' as const, ...r })) },
  { weight: 2, arbitrary: rangeArb(size).map((r) => ({ kind: 'status' as const, ...r })) },
  { weight: 1, arbitrary: fc.constant({ kind: 'flush' as const }) },
);

export const opArb = (size: number): fc.Arbitrary<TimedOp> =>
  fc.tuple(opKindArb(size), fc.oneof(fc.constant(0), fc.nat(30))).map(([op, ticks]) => ({ ...op, ticks }));

/** Keeps the ops whose ranges do not overlap an earlier op of the batch. */
export function disjoint<T extends Op>(ops: T[]): T[] {
  const kept: T[] = [];
  for (const op of ops) {
    if (op.kind !== 'flush' && kept.some((k) => k.kind !== 'flush' && op.offset < k.offset + k.length && k.offset < op.offset + op.length)) continue;
    kept.push(op);
  }
  return kept;
}

export const sequenceArb = (size: number, maxBatches = 6, maxOps = 5) => fc.record({
  seed: fc.integer({ min: 1, max: 0x7fffffff }),
  batches: fc.array(fc.array(opArb(size), { minLength: 1, maxLength: maxOps }).map(disjoint), { minLength: 1, maxLength: maxBatches }),
});

export type Sequence = { seed: number; batches: TimedOp[][] };

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

function alignDown(n: number, a: number): number {
  return Math.floor(n / a) * a;
}

async function readAll(node: BlockNode): Promise<Uint8Array> {
  const buf = new Uint8Array(node.size);
  await node.read(0, buf);
  return buf;
}

/** Block status must describe what reads return: zero extents read zero, runs tile the range. */
function checkExtents(exts: Extent[], offset: number, length: number, contents: Uint8Array, what: string): void {
  let pos = offset;
  for (const e of exts) {
    assert.equal(e.offset, pos, `${what}: extents leave a gap or overlap at ${pos}`);
    assert.ok(e.length > 0, `${what}: empty extent`);
    if (e.zero) {
      for (let i = e.offset; i < e.offset + e.length; i++) {
        if (contents[i] !== 0) assert.fail(`${what}: zero extent [${e.offset}, +${e.length}) holds byte ${contents[i]} at ${i}`);
      }
    }
    pos += e.length;
  }
  assert.equal(pos, offset + length, `${what}: extents end at ${pos}`);
}

/**
 * Runs one sequence on an open image and checks it against the model. The image is reset to
 * known contents first, so one image can serve many sequences.
 */
export async function runSequence(stack: Stack, inst: StackInstance, seq: Sequence): Promise<void> {
  const node = inst.node;
  const size = node.size;
  const persistent = stack.features.persistent;
  const model = persistent ? pattern(size, seq.seed) : new Uint8Array(size);
  if (persistent) await node.write(0, model);
  const discardAlign = Math.max(node.limits.discardAlignment, node.limits.requestAlignment);

  for (const [b, batch] of seq.batches.entries()) {
    const before = model.slice();
    const results = await Promise.all(batch.map(async (op) => {
      for (let i = 0; i < op.ticks; i++) await Promise.resolve();
      switch (op.kind) {
        case 'read': {
          const buf = new Uint8Array(op.length);
          await node.read(op.offset, buf);
          return buf;
        }
        case 'write': {
          const data = op.zeros ? new Uint8Array(op.length) : pattern(op.length, op.seed);
          await node.write(op.offset, data, { fua: op.fua });
          if (persistent) model.set(data, op.offset);
          return undefined;
        }
        case 'zero':
          await node.writeZeroes(op.offset, op.length, { mayUnmap: op.mayUnmap, fua: op.fua });
          model.fill(0, op.offset, op.offset + op.length);
          return undefined;
        case 'discard':
          await node.discard(op.offset, op.length);
          return undefined;
        case 'status': {
          const exts: Extent[] = [];
          for await (const e of node.extents(op.offset, op.length)) exts.push(e);
          return exts;
        }
        case 'flush':
          await node.flush();
          return undefined;
      }
    }));

    const after = await readAll(node);
    batch.forEach((op, i) => {
      const what = `batch ${b}, ${JSON.stringify(op)}`;
      if (op.kind === 'read') {
        // No other op of the batch touches these bytes, so they read as before the batch.
        assertBytesEqual(results[i] as Uint8Array, before.subarray(op.offset, op.offset + op.length), what, op.offset);
      } else if (op.kind === 'status') {
        checkExtents(results[i] as Extent[], op.offset, op.length, before, what);
      } else if (op.kind === 'discard') {
        const end = op.offset + op.length;
        const mayStart = alignUp(op.offset, discardAlign);
        const mayEnd = end === size ? size : alignDown(end, discardAlign);
        for (let p = op.offset; p < end; p++) {
          const inside = p >= mayStart && p < mayEnd;
          if (inside ? after[p] !== before[p] && after[p] !== 0 : after[p] !== before[p]) {
            assert.fail(`${what}: byte ${p} reads ${after[p]}, was ${before[p]} (may change [${mayStart}, ${mayEnd}))`);
          }
        }
        // Which of old-or-zero each byte became is the device's choice; the model follows it.
        if (persistent) model.set(after.subarray(op.offset, end), op.offset);
      }
    });
    assertBytesEqual(after, model, `${stack.name}: device after batch ${b} ${JSON.stringify(batch)}`);

    // Block status now, first of each op's range (a walk from 0 could hide a stale answer
    // cached for a later start), then of the whole image.
    for (const op of [...batch, { kind: 'read' as const, offset: 0, length: size, ticks: 0 }]) {
      if (op.kind === 'flush') continue;
      const exts: Extent[] = [];
      for await (const e of node.extents(op.offset, op.length)) exts.push(e);
      checkExtents(exts, op.offset, op.length, after, `extents of [${op.offset}, +${op.length}) after batch ${b}`);
    }
  }
}

/** Runs `numRuns` random sequences on one image of `stack`; returns how many passed. */
export async function checkStack(stack: Stack, numRuns: number, opts: StackOpenOptions = {}): Promise<number> {
  const inst = await stack.create(IMAGE_SIZE, opts);
  try {
    const details = await fc.check(
      fc.asyncProperty(sequenceArb(IMAGE_SIZE), (seq) => runSequence(stack, inst, seq)),
      { numRuns },
    );
    if (details.failed) throw new Error(`${stack.name}: ${fc.defaultReportMessage(details)}`);
    return details.numRuns;
  } finally {
    await inst.dispose();
  }
}

/** Run counts can be raised (or lowered for a quick look) with VDISK_PROPERTY_RUNS_SCALE. */
export function scaled(runs: number): number {
  const scale = Number(process.env.VDISK_PROPERTY_RUNS_SCALE ?? '1');
  return Math.max(1, Math.round(runs * (Number.isFinite(scale) && scale > 0 ? scale : 1)));
}
