import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

/**
 * The command timed: the installed launcher (bin/vdisk, running the bundle `npm run build` makes),
 * as a user runs it. VDISK_BIN overrides it, e.g. to compare two builds.
 */
export const VDISK = process.env.VDISK_BIN ?? fileURLToPath(new URL('../bin/vdisk', import.meta.url));

/**
 * Runs vdisk and its peer on the same input in the same run, alternating, for several rounds,
 * and reports medians and the ratio. Absolute times on a shared 2-core machine mean little;
 * the ratio, measured side by side, does.
 */
export interface Contender {
  name: string;
  /** One timed run; returns the measured quantity (seconds, or a rate when `higherIsBetter`). */
  run(): Promise<number>;
}

export interface Benchmark {
  name: string;
  /**
   * What the ratio must satisfy, e.g. { max: 1.0 } for time or { min: 0.5 } for throughput;
   * {} for a figure reported for scale only.
   */
  goal: { max?: number; min?: number };
  unit: 's' | 'GiB/s' | 'MiB' | 'ops/s';
  /** false: no untimed warm-up run (a measurement the page cache and JIT do not change). */
  warmup?: boolean;
  /** Tools the benchmark needs installed (run.ts skips it otherwise). */
  requires?: string[];
  rounds: number;
  setup?(): Promise<void>;
  teardown?(): Promise<void>;
  vdisk: Contender;
  peer: Contender;
}

export interface Result {
  name: string;
  unit: string;
  vdiskName: string;
  peerName: string;
  vdisk: number;
  peer: number;
  ratio: number;
  goal: string;
  met: boolean;
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export async function runBenchmark(b: Benchmark): Promise<Result> {
  await b.setup?.();
  try {
    const ours: number[] = [];
    const theirs: number[] = [];
    // One untimed warm-up each, so page cache and JIT state are alike for both.
    if (b.warmup !== false) {
      await b.vdisk.run();
      await b.peer.run();
    }
    for (let i = 0; i < b.rounds; i++) {
      // Alternate who goes first so neither always inherits a warmer cache.
      if (i % 2 === 0) {
        ours.push(await b.vdisk.run());
        theirs.push(await b.peer.run());
      } else {
        theirs.push(await b.peer.run());
        ours.push(await b.vdisk.run());
      }
    }
    const vdisk = median(ours);
    const peer = median(theirs);
    const ratio = vdisk / peer;
    const met = (b.goal.max === undefined || ratio <= b.goal.max) && (b.goal.min === undefined || ratio >= b.goal.min);
    const goal = b.goal.max !== undefined ? `<= ${b.goal.max}x` : b.goal.min !== undefined ? `>= ${b.goal.min}x` : 'none';
    return { name: b.name, unit: b.unit, vdiskName: b.vdisk.name, peerName: b.peer.name, vdisk, peer, ratio, goal, met };
  } finally {
    await b.teardown?.();
  }
}

/** Wall time of a command, its output discarded; fails loudly if the command fails. */
export async function timeCommand(cmd: string, args: string[]): Promise<number> {
  const start = performance.now();
  await new Promise<void>((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim()}`))));
  });
  return (performance.now() - start) / 1000;
}

/** A command's standard output (it must exit 0; fails loudly otherwise). */
export async function commandOutput(cmd: string, args: string[]): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim()}`))));
  });
}

/** Peak resident memory of a command in MiB (GNU time's %M), its output discarded; fails loudly. */
export async function maxRssCommand(cmd: string, args: string[]): Promise<number> {
  const err = await new Promise<string>((resolve, reject) => {
    const child = spawn('/usr/bin/time', ['-f', 'maxrss-kib=%M', cmd, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let text = '';
    child.stderr.on('data', (d) => (text += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(text) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${text.trim()}`))));
  });
  const m = /maxrss-kib=(\d+)\s*$/.exec(err);
  if (!m) throw new Error(`no peak RSS from /usr/bin/time: ${err.trim()}`);
  return Number(m[1]) / 1024;
}

export function formatResults(results: Result[]): string {
  const rows = results.map((r) => {
    const fmt = (v: number) => (r.unit === 's' ? `${(v * 1000).toFixed(1)} ms` : r.unit === 'MiB' ? `${v.toFixed(1)} MiB`
      : r.unit === 'ops/s' ? `${Math.round(v)} ops/s` : `${v.toFixed(2)} GiB/s`);
    const verdict = r.goal === 'none' ? '' : r.met ? 'met' : 'NOT met';
    return `| ${r.name} | ${r.vdiskName}: ${fmt(r.vdisk)} | ${r.peerName}: ${fmt(r.peer)} | ${r.ratio.toFixed(2)}x | ${r.goal} | ${verdict} |`;
  });
  return ['| benchmark | vdisk | peer | ratio (vdisk/peer) | goal | |', '|---|---|---|---|---|---|', ...rows].join('\n');
}
