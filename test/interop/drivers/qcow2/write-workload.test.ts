/**
 * The qcow2 write path, proved against QEMU in "the other direction": QEMU makes the images
 * (`qemu-img create`, never vdisk create), vdisk writes them, QEMU judges the result.
 *
 * For each configuration, two copies of one freshly created image get the same seeded random
 * workload (test/helpers/workload.ts: unaligned, tiny, multi-cluster and end-of-disk writes,
 * zero writes with and without unmap, discards, flushes), one through the real qemu-io 7.2 and
 * one through `vdisk io` in this process, in a few batches (each batch one process or call, so
 * the images are also closed and reopened between batches). Then:
 *   - both runs printed the same lines (timings masked) and exited alike, batch by batch;
 *   - `qemu-img compare` says the two guest disks are identical (backing reads included);
 *   - `qemu-img check` finds no corruption, no leaked clusters and no check errors in vdisk's
 *     copy (and, as a sanity check of the oracle, in qemu's).
 * Phase 2: qemu-io reopens vdisk's copy and writes on (QEMU must be able to continue an image
 * vdisk wrote), the same more commands going to qemu's copy; compare and check again.
 *
 * A failure names the configuration and seed, shows the first commands, the shortest failing
 * prefix found by bisection, and saves the full command list to a file. Replay one
 * configuration with
 *   VDISK_WORKLOAD_SEED=<seed> node --import tsx --test --test-name-pattern='<name>' FILE
 * VDISK_WORKLOAD_OPS=<n> changes the number of commands per configuration (default 1000);
 * VDISK_WORKLOAD_SHRINK=0 skips the bisection; VDISK_STRICT_QCOW2_MAP=1 also requires the
 * allocation (`qemu-img map`, host offsets aside) to match QEMU's, which otherwise is only
 * reported as a diagnostic: `qemu-img compare` judges contents, not allocation.
 * VDISK_WORKLOAD_ORACLE_ONLY=1 runs qemu-io in vdisk's place, to check the harness alone.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { MapEntry } from '../../../../src/cli/map.js';
import { MACHINE_TIMING_LINE, TIMING_LINE } from '../../../../src/cli/io/report.js';
import { vdisk } from '../../../helpers/cli.js';
import { needTools, run, runOk, type RunResult } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';
import { batches, cmdArgs, workload, type WorkloadOptions } from '../../../helpers/workload.js';

const KiB = 1024;
const MiB = 1024 * KiB;

interface Config {
  /** Also the test name, for --test-name-pattern. */
  name: string;
  /** `qemu-img create -o` options for the image under test. */
  options: string;
  size: number;
  cluster: number;
  /** The finer granularity to aim at: the subcluster size with extended_l2=on. */
  unit?: number;
  /** Caps data writes (2 MiB clusters would otherwise move gigabytes). */
  maxWriteBytes?: number;
  backing?: 'qcow2' | 'raw';
  /** Host cache mode of both tools (`-t`): none is O_DIRECT, where the qcow2 driver writes whole new clusters outside its lock. */
  cache?: 'none';
  seed: number;
}

/*
 * Sizes are deliberately not cluster multiples where the cluster allows it: the last cluster is
 * then partial, and QEMU discards and zeroes such a cluster whole when a request runs to the
 * end of the disk. The backing files are smaller than the overlays, so reads past the end of
 * the backing file (zeros) are part of every copy-on-write near the end.
 */
const CONFIGS: Config[] = [
  { name: 'cluster_size=512', options: 'cluster_size=512', size: 2 * MiB, cluster: 512, seed: 0x5120001 },
  { name: 'cluster_size=64k', options: 'cluster_size=65536', size: 8 * MiB + 3584, cluster: 64 * KiB, seed: 0x640002 },
  {
    name: 'cluster_size=2M', options: 'cluster_size=2097152', size: 13 * MiB + 2560, cluster: 2 * MiB,
    maxWriteBytes: 2 * MiB + 512 * KiB, seed: 0x2000003,
  },
  {
    name: 'extended_l2=on', options: 'cluster_size=65536,extended_l2=on', size: 8 * MiB + 2560, cluster: 64 * KiB,
    unit: 2 * KiB, seed: 0xe120004,
  },
  { name: 'compat=0.10', options: 'compat=0.10,cluster_size=65536', size: 8 * MiB + 1024, cluster: 64 * KiB, seed: 0x0100005 },
  { name: 'qcow2 backing', options: 'cluster_size=65536', size: 8 * MiB + 512, cluster: 64 * KiB, backing: 'qcow2', seed: 0xb0c0006 },
  { name: 'raw backing', options: 'cluster_size=65536', size: 8 * MiB, cluster: 64 * KiB, backing: 'raw', seed: 0xb0a0007 },
  // Where the rules differ most with a backing file: v2 has no zero flag, subclusters COW alone.
  {
    name: 'compat=0.10 over qcow2 backing', options: 'compat=0.10,cluster_size=65536', size: 8 * MiB + 512, cluster: 64 * KiB,
    backing: 'qcow2', seed: 0x0b00008,
  },
  {
    name: 'extended_l2=on over qcow2 backing', options: 'cluster_size=65536,extended_l2=on', size: 8 * MiB + 512,
    cluster: 64 * KiB, unit: 2 * KiB, backing: 'qcow2', seed: 0xe1b0009,
  },
  { name: 'cluster_size=64k, cache=none (O_DIRECT)', options: 'cluster_size=65536', size: 8 * MiB, cluster: 64 * KiB, cache: 'none', seed: 0x6400010 },
];

const envInt = (name: string): number | undefined => {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name}=${v}: not a non-negative integer`);
  return n;
};
const OPS = envInt('VDISK_WORKLOAD_OPS') ?? 1000;
const SEED = envInt('VDISK_WORKLOAD_SEED');
const SHRINK = process.env.VDISK_WORKLOAD_SHRINK !== '0';
const STRICT_MAP = process.env.VDISK_STRICT_QCOW2_MAP === '1';
/** Runs qemu-io in place of vdisk io: checks the harness itself (generator, oracles) without vdisk. */
const ORACLE_ONLY = process.env.VDISK_WORKLOAD_ORACLE_ONLY === '1';
/** Phase 1 runs in this many batches (process launches per tool). */
const BATCHES = 3;
/** Phase 2 (qemu-io continuing vdisk's image) is this fraction of phase 1. */
const PHASE2_OPS = Math.ceil(OPS / 4);
/** How many commands a failure message shows. */
const SHOW = 30;

const maskTiming = (text: string) =>
  text.split('\n').map((l) => l.replace(TIMING_LINE, '$1<timing>').replace(MACHINE_TIMING_LINE, '$1<timing>')).join('\n');
/** Output with timings masked and the program name of error_report() lines made the same. */
const normalize = (r: RunResult): RunResult => ({
  code: r.code,
  stdout: maskTiming(r.stdout),
  stderr: r.stderr.replace(/^qemu-io: /gm, 'vdisk io: '),
});

let tmp: TmpDir;
before(async () => {
  tmp = await makeTmpDir('vdisk-qcow2-workload-');
});
after(() => tmp.cleanup());

/** The base images: patterned data, holes, a zeroed range, data up to the end of the file. */
async function makeBacking(kind: 'qcow2' | 'raw', dir: string): Promise<string> {
  if (kind === 'qcow2') {
    const base = path.join(dir, 'base.qcow2');
    // A smaller cluster than the overlay's, so one overlay cluster COWs from several base clusters.
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=32768', base, String(6 * MiB)]);
    await runOk('qemu-io', ['-f', 'qcow2', ...cmdArgs([
      'write -P 0xa1 0 1M', 'write -P 0xa2 1536k 300000', 'write -z 3M 256k', 'write -P 0xa3 4000000 777777',
      'write -P 0xa4 5M 1M', 'write -P 0xa5 2222222 3333',
    ]), base]);
    return base;
  }
  // An odd size (not a sector multiple): QEMU reads zeros past its end.
  const base = path.join(dir, 'base.raw');
  await writeFile(base, '');
  await truncate(base, 5 * MiB + 1000);
  await runOk('qemu-io', ['-f', 'raw', ...cmdArgs([
    'write -P 0xb1 0 700k', 'write -P 0xb2 2M 1M', 'write -P 0xb3 3500001 4097', `write -P 0xb4 ${5 * MiB + 1000 - 5000} 5000`,
  ]), base]);
  return base;
}

/** A fresh image made by qemu-img, as the configuration asks. */
async function makeImage(c: Config, dir: string): Promise<string> {
  const file = path.join(dir, 'image.qcow2');
  const backing = c.backing ? ['-b', await makeBacking(c.backing, dir), '-F', c.backing] : [];
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', c.options, ...backing, file, String(c.size)]);
  return file;
}

interface CheckReport {
  corruptions?: number;
  leaks?: number;
  'check-errors'?: number;
  [k: string]: unknown;
}

/** `qemu-img check`, human and JSON; null when clean, else what is wrong. */
async function checkProblems(file: string, who: string): Promise<string | null> {
  const human = await run('qemu-img', ['check', '-f', 'qcow2', file]);
  const json = await run('qemu-img', ['check', '-f', 'qcow2', '--output=json', file]);
  const problems: string[] = [];
  if (human.code !== 0) problems.push(`exit ${human.code}`);
  if (!/No errors were found on the image/.test(human.stdout)) problems.push('no "No errors were found on the image."');
  let report: CheckReport | undefined;
  try {
    report = JSON.parse(json.stdout) as CheckReport;
  } catch {
    problems.push(`unparsable --output=json (exit ${json.code}): ${json.stderr.trim()}`);
  }
  if (report) {
    for (const k of ['corruptions', 'leaks', 'check-errors'] as const) {
      if ((report[k] ?? 0) !== 0) problems.push(`${k}: ${report[k]}`);
    }
  }
  if (problems.length === 0) return null;
  const detail = (human.stdout + human.stderr).trim().split('\n').slice(0, 25).join('\n');
  return `qemu-img check of ${who}'s copy: ${problems.join('; ')}\n${detail}`;
}

/** `qemu-img compare` of qemu's copy (a) and vdisk's (b); null when identical. */
async function compareProblem(a: string, b: string): Promise<string | null> {
  const r = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', a, b]);
  return r.code === 0 ? null : `qemu-img compare exited ${r.code}: ${(r.stdout + r.stderr).trim()}`;
}

/**
 * The command whose output a stdout line belongs to, by qemu-io's accounting: every write and
 * discard prints two lines (report and timings), flush none.
 */
function commandOfLine(cmds: readonly string[], line: number): number {
  let at = 0;
  for (let i = 0; i < cmds.length; i++) {
    if (cmds[i] === 'flush') continue;
    at += 2;
    if (line < at) return i;
  }
  return cmds.length - 1;
}

/** Why two normalized outputs differ, with the first differing line and its command; null if alike. */
function outputProblem(cmds: readonly string[], first: number, qemu: RunResult, ours: RunResult): string | null {
  const problems: string[] = [];
  if (ours.code !== qemu.code) problems.push(`exit status: vdisk ${ours.code}, qemu-io ${qemu.code}`);
  if (ours.stderr !== qemu.stderr) problems.push(`stderr: vdisk ${JSON.stringify(ours.stderr.slice(0, 400))}, qemu-io ${JSON.stringify(qemu.stderr.slice(0, 400))}`);
  if (ours.stdout !== qemu.stdout) {
    const a = ours.stdout.split('\n');
    const b = qemu.stdout.split('\n');
    let i = 0;
    while (i < a.length && i < b.length && a[i] === b[i]) i++;
    const k = commandOfLine(cmds, i);
    problems.push(`stdout line ${i + 1} (command #${first + k}: ${cmds[k]}): vdisk ${JSON.stringify(a[i] ?? '<end>')}, qemu-io ${JSON.stringify(b[i] ?? '<end>')}`);
  }
  return problems.length === 0 ? null : problems.join('\n');
}

/** Copies of the image: one for qemu-io, one for vdisk. */
async function twins(image: string, dir: string, tag: string): Promise<[string, string]> {
  const q = path.join(dir, `${tag}.qemu.qcow2`);
  const v = path.join(dir, `${tag}.vdisk.qcow2`);
  await copyFile(image, q);
  await copyFile(image, v);
  return [q, v];
}

/**
 * Phase 1 on fresh copies: the commands in `parts` batches through both tools, then output,
 * compare and check. Returns the copies and the problems found (empty when all agree).
 */
async function applyBoth(c: Config, image: string, dir: string, tag: string, cmds: readonly string[], parts: number): Promise<{ q: string; v: string; problems: string[] }> {
  const cache = c.cache ? ['-t', c.cache] : [];
  const [q, v] = await twins(image, dir, tag);
  const problems: string[] = [];
  let first = 0;
  for (const batch of batches(cmds, parts)) {
    const qemu = normalize(await run('qemu-io', ['-f', 'qcow2', ...cache, ...cmdArgs(batch), q]));
    if (qemu.code !== 0) throw new Error(`qemu-io itself failed on a generated workload (a generator bug): ${qemu.stderr.trim()}`);
    let ours: RunResult;
    try {
      ours = normalize(ORACLE_ONLY
        ? await run('qemu-io', ['-f', 'qcow2', ...cache, ...cmdArgs(batch), v])
        : await vdisk(['io', '-f', 'qcow2', ...cache, ...cmdArgs(batch), v]));
    } catch (e) {
      // main() should turn every failure into an exit status; a throw is a finding too.
      problems.push(`batch of commands #${first}..#${first + batch.length - 1}: vdisk io threw: ${(e as Error)?.stack ?? String(e)}`);
      break;
    }
    const p = outputProblem(batch, first, qemu, ours);
    if (p) problems.push(`batch of commands #${first}..#${first + batch.length - 1}: ${p}`);
    first += batch.length;
  }
  const cmp = await compareProblem(q, v);
  if (cmp) problems.push(cmp);
  const ck = await checkProblems(v, 'vdisk');
  if (ck) problems.push(ck);
  return { q, v, problems };
}

/**
 * The shortest prefix of cmds that still fails (bisection, assuming failure persists once it
 * appears, which is usual but not certain), run in one batch each.
 */
async function shortestFailingPrefix(c: Config, image: string, dir: string, cmds: readonly string[]): Promise<{ length: number; problems: string[] } | null> {
  let lo = 0; // a prefix known (or assumed) to pass
  let hi = cmds.length; // a prefix known to fail
  let hiProblems: string[] | null = null;
  for (let step = 0; step < 16 && hi - lo > 1; step++) {
    const mid = Math.floor((lo + hi) / 2);
    const { problems } = await applyBoth(c, image, dir, `shrink-${mid}`, cmds.slice(0, mid), 1);
    if (problems.length > 0) {
      hi = mid;
      hiProblems = problems;
    } else {
      lo = mid;
    }
  }
  if (hiProblems === null) {
    // Never confirmed below the whole list in one batch: try the whole list in one batch.
    const { problems } = await applyBoth(c, image, dir, `shrink-${hi}`, cmds.slice(0, hi), 1);
    if (problems.length === 0) return null;
    hiProblems = problems;
  }
  return { length: hi, problems: hiProblems };
}

/** The full commands, saved outside the test's temporary directory so they survive it. */
async function saveCommands(c: Config, seed: number, cmds: readonly string[]): Promise<string> {
  const file = path.join(os.tmpdir(), `vdisk-qcow2-workload-${c.name.replace(/[^A-Za-z0-9.]+/g, '_')}-${seed}.txt`);
  await writeFile(file, cmds.join('\n') + '\n');
  return file;
}

/** The command line that reruns just this configuration with this seed. */
function replay(c: Config, seed: number): string {
  const pattern = `^${c.name.replace(/[\\^$.*+?()[\]{}|]/g, '\\$&')}$`;
  return `replay: VDISK_WORKLOAD_SEED=${seed} VDISK_WORKLOAD_OPS=${OPS} node --import tsx --test --test-name-pattern='${pattern}' ` +
    'test/interop/drivers/qcow2/write-workload.test.ts';
}

async function failureMessage(c: Config, seed: number, phase: string, image: string, dir: string, cmds: readonly string[], problems: string[]): Promise<string> {
  const lines = [
    `${c.name}, ${phase}: seed ${seed} (0x${seed.toString(16)}), ${cmds.length} commands, image options ${c.options}` +
      `${c.backing ? `, ${c.backing} backing` : ''}, size ${c.size}`,
    ...problems,
  ];
  if (SHRINK) {
    const shrunk = await shortestFailingPrefix(c, image, dir, cmds);
    if (shrunk) {
      lines.push(`shortest failing prefix found: the first ${shrunk.length} commands (last: ${cmds[shrunk.length - 1]}), failing with:`, ...shrunk.problems);
    } else {
      lines.push('bisection found no failing prefix in a single batch: the failure needs the reopen between batches');
    }
  }
  lines.push(`first ${Math.min(SHOW, cmds.length)} commands: ${JSON.stringify(cmds.slice(0, SHOW))}`);
  lines.push(`all commands: ${await saveCommands(c, seed, cmds)}`);
  lines.push(replay(c, seed));
  return lines.join('\n');
}

/**
 * The map rows without host offsets (allocation order may differ), adjacent rows that then look
 * alike merged (QEMU splits rows where host offsets stop being contiguous); the first
 * difference, or null.
 */
async function mapDifference(q: string, v: string): Promise<string | null> {
  type Row = Pick<MapEntry, 'start' | 'length' | 'depth' | 'present' | 'zero' | 'data'>;
  const rows = async (f: string) => {
    const out: Row[] = [];
    for (const { start, length, depth, present, zero, data } of JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', 'qcow2', f])) as MapEntry[]) {
      const last = out[out.length - 1];
      if (last && last.start + last.length === start && last.depth === depth && last.present === present && last.zero === zero && last.data === data) {
        last.length += length;
      } else {
        out.push({ start, length, depth, present, zero, data });
      }
    }
    return out;
  };
  const a = await rows(q);
  const b = await rows(v);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (JSON.stringify(a[i]) !== JSON.stringify(b[i])) return `map row ${i}: qemu ${JSON.stringify(a[i])}, vdisk ${JSON.stringify(b[i])}`;
  }
  return null;
}

async function runConfig(t: TestContext, c: Config): Promise<void> {
  const dir = path.join(tmp.dir, c.name.replace(/[^A-Za-z0-9.]+/g, '_'));
  await mkdir(dir, { recursive: true });
  const image = await makeImage(c, dir);
  const seed = SEED ?? c.seed;
  const opts: WorkloadOptions = {
    size: c.size, clusterSize: c.cluster, count: OPS, seed,
    ...(c.unit !== undefined ? { unit: c.unit } : {}),
    ...(c.maxWriteBytes !== undefined ? { maxWriteBytes: c.maxWriteBytes } : {}),
  };
  const cmds = workload(opts);

  // Phase 1: the same workload through qemu-io and vdisk io.
  const started = Date.now();
  const { q, v, problems } = await applyBoth(c, image, dir, 'phase1', cmds, BATCHES).catch((e: unknown) => {
    throw new Error(`${c.name}: seed ${seed}: ${(e as Error)?.message ?? String(e)}\n${replay(c, seed)}`, { cause: e });
  });
  const qemuCheck = await checkProblems(q, 'qemu');
  assert.equal(qemuCheck, null, `the oracle: ${qemuCheck}`);
  if (problems.length > 0) assert.fail(await failureMessage(c, seed, 'phase 1 (vdisk io writes)', image, dir, cmds, problems));
  const mapDiff = await mapDifference(q, v);
  if (mapDiff) {
    if (STRICT_MAP) assert.fail(`${c.name}: seed ${seed}: allocation differs from QEMU's: ${mapDiff}`);
    t.diagnostic(`allocation differs from QEMU's (contents identical): ${mapDiff}`);
  }

  // Phase 2: qemu-io reopens vdisk's image and writes on; the same commands go to qemu's copy.
  const more = workload({ ...opts, count: PHASE2_OPS, seed: (seed + 1) >>> 0 });
  const phase2: string[] = [];
  for (const [who, file] of [['qemu', q], ['vdisk', v]] as const) {
    const r = await run('qemu-io', ['-f', 'qcow2', ...cmdArgs(more), file]);
    if (r.code !== 0) phase2.push(`qemu-io continuing ${who}'s copy exited ${r.code}: ${r.stderr.trim()}`);
  }
  const cmp = await compareProblem(q, v);
  if (cmp) phase2.push(cmp);
  for (const [who, file] of [['qemu', q], ['vdisk', v]] as const) {
    const ck = await checkProblems(file, who);
    if (ck) phase2.push(`after qemu-io wrote on: ${ck}`);
  }
  if (phase2.length > 0) {
    assert.fail([
      `${c.name}, phase 2 (qemu-io writing on vdisk's image): phase-1 seed ${seed}, ${OPS} commands (all agreed), then seed ${(seed + 1) >>> 0}, ${more.length} commands`,
      ...phase2,
      `first ${Math.min(SHOW, more.length)} phase-2 commands: ${JSON.stringify(more.slice(0, SHOW))}`,
      replay(c, seed),
    ].join('\n'));
  }
  t.diagnostic(`${c.name}: seed ${seed}, ${cmds.length} + ${more.length} commands, ${Date.now() - started} ms`);
}

describe('qcow2 writes by vdisk io, judged by QEMU (qemu-img create, qemu-io, compare, check)', () => {
  for (const c of CONFIGS) {
    it(c.name, async (t) => {
      if (!needTools(t, 'qemu-img', 'qemu-io')) return;
      await runConfig(t, c);
    });
  }
});
