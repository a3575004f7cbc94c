import type { CopyKind, CopyRequest } from './copy-plan.js';
import type { SourceSpan } from './source-span.js';

export interface ClusterPlanOptions {
  span: SourceSpan;
  clusterSize: number;
  /** Largest data request: a multiple of the cluster size. */
  maxData: number;
  /** Largest zero or backing request. */
  maxZero: number;
}

/**
 * Regroups a copy plan into whole clusters of the target, for compressed writes (qemu-img convert
 * -c, convert_iteration_sectors): a cluster the plan gives one kind keeps it (zero, backing or
 * data); a cluster that mixes kinds becomes data, read whole from the sources (their zeros read as
 * zeros, what they leave to a backing file reads through it), as QEMU makes a run shorter than a
 * cluster data. The image's last cluster may be short. Runs of one kind merge, data cut at
 * `maxData` boundaries, the rest at `maxZero` ones.
 */
export async function* clusterPlan(plan: AsyncIterable<CopyRequest>, opts: ClusterPlanOptions): AsyncGenerator<CopyRequest> {
  const cs = opts.clusterSize;
  const total = opts.span.size;
  let seq = 0;
  /** Whole clusters of one kind, not yet emitted. */
  let run: { kind: CopyKind; start: number; end: number } | undefined;
  /** The cluster being filled by requests that do not cover it alone. */
  let partial: { kind: CopyKind; start: number } | undefined;

  const emit = function* (all: boolean): Generator<CopyRequest> {
    while (run && run.start < run.end) {
      const limit = run.kind === 'data' ? opts.maxData : opts.maxZero;
      const boundary = Math.floor((run.start + limit) / limit) * limit;
      if (boundary > run.end && !all) return;
      const end = Math.min(boundary, run.end);
      yield { seq: seq++, offset: run.start, length: end - run.start, kind: run.kind, ...opts.span.locate(run.start) };
      run.start = end;
    }
    run = undefined;
  };
  const add = function* (kind: CopyKind, start: number, end: number): Generator<CopyRequest> {
    if (run && (run.kind !== kind || run.end !== start)) yield* emit(true);
    if (run) run.end = end;
    else run = { kind, start, end };
    yield* emit(false);
  };

  for await (const req of plan) {
    let pos = req.offset;
    const end = req.offset + req.length;
    if (partial) {
      const clusterEnd = Math.min(partial.start + cs, total);
      if (partial.kind !== req.kind) partial.kind = 'data';
      pos = Math.min(end, clusterEnd);
      if (pos === clusterEnd) {
        yield* add(partial.kind, partial.start, clusterEnd);
        partial = undefined;
      }
      if (pos === end) continue;
    }
    // pos is on a cluster boundary now.
    const whole = end === total ? end : end - (end % cs);
    if (whole > pos) yield* add(req.kind, pos, whole);
    if (whole < end) partial = { kind: req.kind, start: whole };
  }
  // A plan covers the whole span, so the last cluster has been closed already.
  if (partial) yield* add(partial.kind, partial.start, Math.min(partial.start + cs, total));
  yield* emit(true);
}
