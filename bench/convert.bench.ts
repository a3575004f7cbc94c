import { execFileSync, spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, writeSync, ftruncateSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { timeCommand, VDISK, type Benchmark } from './harness.js';

/** The vdisk entry point timed (VDISK_BIN overrides it, e.g. to compare two builds). */
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** The source: 4 GiB holding 256 runs of 2 MiB, one every 16 MiB (512 MiB of random data). */
const SIZE = 4 * GiB;
const RUN = 2 * MiB;
const STRIDE = 16 * MiB;
const RUNS = 256;

/**
 * Thrown by a benchmark's setup when this machine cannot run it (run.ts reports it as skipped):
 * here, when a loop-mounted file system cannot be made.
 */
export class BenchmarkSkipped extends Error {}

/**
 * `vdisk convert` against `qemu-img convert` (issue 6), both with their defaults, on a sparse
 * 4 GiB image holding 512 MiB of incompressible data: qcow2 → raw, raw → qcow2 and
 * raw → qcow2 -c on the temporary directory's file system, and raw → raw on an XFS made with
 * reflink=1 on a loop device (where vdisk clones and qemu-img copies). Each run writes a fresh
 * target, removed after it, so neither tool finds the other's file or its dirty pages. Before
 * each run the source's data is read, untimed, so both find it in the page cache whatever the
 * machine evicted in between (the copy, not the disk, is measured).
 *
 * Beside each wall-time pair, the same pair's CPU time (user + system, GNU time), for scale:
 * on a shared machine it moves less than the wall time does.
 */
export function convertBenchmarks(rounds = 5): Benchmark[] {
  const cases: Case[] = [
    { name: 'qcow2 → raw', source: 'qcow2', args: (src, out) => ['-f', 'qcow2', '-O', 'raw', src, out] },
    { name: 'raw → qcow2', source: 'raw', args: (src, out) => ['-f', 'raw', '-O', 'qcow2', src, out] },
    // Each run compresses 8192 clusters (~10 s of CPU): fewer rounds.
    { name: 'raw → qcow2 -c', source: 'raw', args: (src, out) => ['-c', '-f', 'raw', '-O', 'qcow2', src, out], rounds: 3, noCpu: true },
    { name: 'raw → raw on reflink XFS', source: 'xfs', args: (src, out) => ['-f', 'raw', '-O', 'raw', src, out] },
  ];
  return cases.flatMap((c) => {
    const wall = pair(c, 'wall', c.rounds ?? rounds);
    return c.noCpu ? [wall] : [wall, pair(c, 'cpu', c.rounds ?? rounds)];
  });
}

interface Case {
  name: string;
  source: 'raw' | 'qcow2' | 'xfs';
  args: (src: string, out: string) => string[];
  rounds?: number;
  /** Leave out the CPU-time pair (where the run is long and both spend the same on compression). */
  noCpu?: boolean;
}

function pair(c: Case, measure: 'wall' | 'cpu', rounds: number): Benchmark {
  let src = '';
  let dir = '';
  const run = (tool: string, toolArgs: (out: string) => string[], out: () => string) => async () => {
    const file = out();
    await fsp.rm(file, { force: true });
    warm(src);
    const t = measure === 'wall' ? await timeCommand(tool, toolArgs(file)) : await cpuCommand(tool, toolArgs(file));
    await fsp.rm(file, { force: true });
    return t;
  };
  return {
    name: `convert ${c.name}, 4 GiB with 512 MiB of data${measure === 'cpu' ? ': CPU time (user + sys)' : ''}`,
    goal: measure === 'wall' ? { max: 0.8 } : {},
    unit: 's',
    rounds,
    // mkfs.xfs has no --version for run.ts to try: the XFS setup skips itself without it.
    requires: ['qemu-img', ...(measure === 'cpu' ? ['/usr/bin/time'] : [])],
    async setup() {
      const f = fixture();
      if (c.source === 'xfs') {
        const xfs = reflinkXfs(f.dir);
        [src, dir] = [xfs.src, xfs.dir];
      } else {
        [src, dir] = [c.source === 'raw' ? f.raw : f.qcow2, f.dir];
      }
    },
    vdisk: { name: 'vdisk convert', run: run(VDISK, (out) => ['convert', ...c.args(src, out)], () => path.join(dir, 'out.vdisk')) },
    peer: { name: 'qemu-img convert', run: run('qemu-img', (out) => ['convert', ...c.args(src, out)], () => path.join(dir, 'out.qemu')) },
  };
}

export interface Fixture {
  dir: string;
  raw: string;
  qcow2: string;
}

let made: Fixture | undefined;

/** The raw source and qemu-img's qcow2 of it, made once per process and removed at exit. */
export function fixture(): Fixture {
  if (made) return made;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vdisk-bench-convert-'));
  // The XFS stays mounted for every pair that uses it, and goes with the rest at exit.
  process.on('exit', () => {
    unmountXfs();
    rmSync(dir, { recursive: true, force: true });
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
  const f: Fixture = { dir, raw: path.join(dir, 'src.raw'), qcow2: path.join(dir, 'src.qcow2') };
  console.error('  creating a 4 GiB raw image with 512 MiB of data, and its qcow2');
  writeSource(f.raw);
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', f.raw, f.qcow2], { stdio: ['ignore', 'ignore', 'inherit'] });
  made = f;
  return f;
}

function writeSource(file: string): void {
  const fd = openSync(file, 'w');
  try {
    ftruncateSync(fd, SIZE);
    const chunk = Buffer.alloc(RUN);
    for (let i = 0; i < RUNS; i++) writeSync(fd, randomFillSync(chunk), 0, RUN, i * STRIDE);
  } finally {
    closeSync(fd);
  }
}

/**
 * Reads the source's data into the page cache: all of a qcow2 (512 MiB and its metadata), the
 * data runs of a raw image (reading its holes would only take time).
 */
export function warm(file: string): void {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(RUN);
    if (file.endsWith('.qcow2')) {
      for (let pos = 0; readSync(fd, buf, 0, RUN, pos) > 0; pos += RUN);
    } else {
      for (let i = 0; i < RUNS; i++) readSync(fd, buf, 0, RUN, i * STRIDE);
    }
  } finally {
    closeSync(fd);
  }
}

interface Xfs {
  image: string;
  mnt: string;
}

let xfs: (Xfs & { dir: string; src: string }) | undefined;

/**
 * An XFS with reflink on a loop device (as test/helpers/loop-fs.ts makes), holding a copy of the
 * raw source; 3 GiB: the source's 512 MiB and qemu-img's copy of it fit with room to spare.
 * Throws BenchmarkSkipped where mkfs or the mount is refused (no root, no loop devices).
 */
function reflinkXfs(base: string): Xfs & { dir: string; src: string } {
  if (xfs) return xfs;
  const image = path.join(base, 'xfs.img');
  const mnt = path.join(base, 'xfs');
  mkdirSync(mnt, { recursive: true });
  const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  try {
    sh('truncate', ['-s', String(3 * GiB), image]);
    sh('mkfs.xfs', ['-q', '-m', 'reflink=1', image]);
  } catch (err) {
    rmSync(image, { force: true });
    throw new BenchmarkSkipped(`mkfs.xfs -m reflink=1 failed: ${stderrOf(err)}`);
  }
  try {
    sh('mount', ['-o', 'loop', image, mnt]);
  } catch (err) {
    rmSync(image, { force: true });
    throw new BenchmarkSkipped(`cannot mount a loop file system here: ${stderrOf(err)}`);
  }
  xfs = { image, mnt, dir: mnt, src: path.join(mnt, 'src.raw') };
  writeSource(xfs.src);
  return xfs;
}

/** Unmounts the XFS and removes its image (its loop device goes with the mount). */
function unmountXfs(): void {
  if (!xfs) return;
  const { image, mnt } = xfs;
  xfs = undefined;
  try {
    execFileSync('umount', [mnt], { stdio: 'ignore' });
  } catch {
    execFileSync('umount', ['-l', mnt], { stdio: 'ignore' });
  }
  rmSync(image, { force: true });
}

function stderrOf(err: unknown): string {
  const e = err as { stderr?: Buffer; message?: string };
  return (e.stderr?.toString().trim() || e.message) ?? String(err);
}

/** User + system CPU seconds of a command and its threads (GNU time), its output discarded; fails loudly. */
export async function cpuCommand(cmd: string, args: string[]): Promise<number> {
  const err = await new Promise<string>((resolve, reject) => {
    const child = spawn('/usr/bin/time', ['-f', 'cpu=%U+%S', cmd, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let text = '';
    child.stderr.on('data', (d) => (text += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(text) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${text.trim()}`))));
  });
  const m = /cpu=([\d.]+)\+([\d.]+)\s*$/.exec(err);
  if (!m) throw new Error(`no CPU time from /usr/bin/time: ${err.trim()}`);
  return Number(m[1]) + Number(m[2]);
}
