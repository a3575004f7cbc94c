import { execFile, execFileSync } from 'node:child_process';
import { open } from 'node:fs/promises';
import type { TestContext } from 'node:test';
import type { MapEntry } from '../../src/cli/map.js';

/**
 * The real peers (qemu-img, qemu-io, qemu-nbd, nbdkit, nbdinfo, nbdcopy, fio) are the oracles of
 * the interop tests. A missing one skips the test with a message, unless VDISK_REQUIRE_ORACLES=1
 * (CI), when the test fails instead.
 */
const known = new Map<string, boolean>();

export function haveTool(name: string): boolean {
  let ok = known.get(name);
  if (ok === undefined) {
    try {
      execFileSync(name, ['--version'], { stdio: 'ignore' });
      ok = true;
    } catch (err) {
      // Present but without --version (openssl exits 1 on it): only "not found" means missing.
      ok = (err as NodeJS.ErrnoException).code !== 'ENOENT';
    }
    known.set(name, ok);
  }
  return ok;
}

/** True when every tool is installed; otherwise skips t (or throws under VDISK_REQUIRE_ORACLES=1). */
export function needTools(t: TestContext, ...names: string[]): boolean {
  const missing = names.filter((n) => !haveTool(n));
  if (missing.length === 0) return true;
  const why = `needs ${missing.join(', ')} (Debian: qemu-utils nbdkit libnbd-bin fio openssl)`;
  if (process.env.VDISK_REQUIRE_ORACLES === '1') throw new Error(`${why}, and VDISK_REQUIRE_ORACLES=1`);
  t.skip(why);
  return false;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; never throws for a non-zero exit. */
export function run(cmd: string, args: readonly string[], opts: { input?: string; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { cwd: opts.cwd, maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') return reject(err);
      resolve({ code: child.exitCode ?? 1, stdout, stderr });
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Runs a command that must succeed and returns its stdout. */
export async function runOk(cmd: string, args: readonly string[], opts: { input?: string; cwd?: string } = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

/**
 * `qemu-img map --output=json -f FORMAT FILE`. Run it before anything reads the file: on ext4
 * a reserved (unwritten) range whose pages a read has cached reports as data afterwards.
 */
export async function qemuImgMap(file: string, format = 'raw'): Promise<MapEntry[]> {
  return JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', format, file])) as MapEntry[];
}

/**
 * Bytes of the file system allocated to a file's data: the lengths of its extents, written or
 * unwritten, from FIEMAP (e2fsprogs' filefrag) after an fsync. Unlike st_blocks it leaves out the
 * file system's own blocks for the file (an ext4 extent-tree block appears once a file has more
 * than four extents, so two files with the same allocation can differ by a block by layout alone).
 */
export async function allocatedBytes(file: string): Promise<number> {
  const fh = await open(file, 'r+');
  await fh.sync();
  await fh.close();
  const out = await runOk('filefrag', ['-e', file]);
  const blockSize = Number(/\((?:\d+) blocks? of (\d+) bytes\)/.exec(out)?.[1]);
  if (!Number.isInteger(blockSize) || blockSize <= 0) throw new Error(`filefrag: no block size in ${JSON.stringify(out.split('\n')[1])}`);
  let blocks = 0;
  for (const line of out.split('\n')) {
    const m = /^\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+):/.exec(line);
    if (m) blocks += Number(m[1]);
  }
  return blocks * blockSize;
}
