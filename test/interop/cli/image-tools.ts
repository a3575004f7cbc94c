/**
 * Shared by the resize, amend and rebase interop tests: run qemu-img and vdisk on twin copies of
 * one image and compare what they did; hold an image open in qemu-io to see a lock refused.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFile, readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { vdisk } from '../../helpers/cli.js';
import { run, runOk, type RunResult } from '../../helpers/oracles.js';

export interface Twins {
  theirs: RunResult;
  ours: RunResult;
  /** The copy qemu-img changed, and the one vdisk changed. */
  qemuFile: string;
  vdiskFile: string;
}

/**
 * Copies `file` to `<file>.qemu` and `<file>.vdisk`, runs `qemu-img COMMAND ARGS` on the first and
 * `vdisk COMMAND ARGS` on the second (`{image}` in args stands for the copy), and asserts that both
 * exit alike and print the same on stdout; a failure is one line on stderr for vdisk.
 */
export async function twins(command: string, file: string, args: readonly (string | { image: true })[]): Promise<Twins> {
  const qemuFile = `${file}.qemu`;
  const vdiskFile = `${file}.vdisk`;
  await copyFile(file, qemuFile);
  await copyFile(file, vdiskFile);
  const fill = (target: string) => args.map((a) => (typeof a === 'string' ? a : target));
  const theirs = await run('qemu-img', [command, ...fill(qemuFile)]);
  const ours = await vdisk([command, ...fill(vdiskFile)]);
  assert.equal(ours.code, theirs.code, `exit status: vdisk ${ours.code} (${ours.stderr.trim()}), qemu-img ${theirs.code} (${theirs.stderr.trim()})`);
  assert.equal(ours.stdout, theirs.stdout, 'stdout');
  if (ours.code !== 0) assertOneLineError(ours, theirs);
  return { theirs, ours, qemuFile, vdiskFile };
}

/** vdisk failed with a message (one line, or qemu-img's two where qemu-img prints an error and a warning). */
export function assertOneLineError(ours: RunResult, theirs: RunResult): void {
  const lines = ours.stderr.split('\n').filter((l) => l !== '');
  const theirLines = theirs.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('Try ') && !/^ {9}|^WARNING: Image format was not specified/.test(l));
  assert.ok(lines.length >= 1 && lines.length <= Math.max(1, theirLines.length), `vdisk's error: ${JSON.stringify(ours.stderr)} (qemu-img: ${JSON.stringify(theirs.stderr)})`);
  assert.ok(!/\n\s+at /.test(ours.stderr), 'no stack trace');
}

/** `qemu-img info --output=json` of an image, parsed. */
export async function info(file: string, format?: string): Promise<Record<string, any>> {
  return JSON.parse(await runOk('qemu-img', ['info', '--output=json', ...(format ? ['-f', format] : []), file]));
}

/** What qemu-img info says about the fields these commands change (size, compat, refcounts, backing). */
export async function summary(file: string, format?: string): Promise<Record<string, unknown>> {
  const i = await info(file, format);
  const data = (i['format-specific']?.data ?? {}) as Record<string, unknown>;
  return {
    size: i['virtual-size'], compat: data.compat, lazy: data['lazy-refcounts'], refcountBits: data['refcount-bits'],
    backing: i['backing-filename'], backingFormat: i['backing-filename-format'], dirty: i['dirty-flag'],
  };
}

/** qemu-img check finds nothing wrong (exit 0: no corruptions, no leaks); `noBacking` checks without opening the backing file. */
export async function assertChecks(file: string, format = 'qcow2', noBacking = false): Promise<void> {
  const spec = `json:${JSON.stringify({ driver: format, file: { driver: 'file', filename: file }, backing: null })}`;
  const r = await run('qemu-img', noBacking ? ['check', spec] : ['check', '-f', format, file]);
  assert.equal(r.code, 0, `qemu-img check ${file}: ${r.stdout}${r.stderr}`);
}

/** qemu-img compare says the two read the same (backing chains included). */
export async function assertSameContent(a: string, b: string, formats: [string, string] = ['qcow2', 'qcow2']): Promise<void> {
  const r = await run('qemu-img', ['compare', '-f', formats[0], '-F', formats[1], a, b]);
  assert.equal(r.code, 0, `qemu-img compare ${a} ${b}: ${r.stdout}${r.stderr}`);
}

/**
 * Runs `fn` while qemu-io holds `file` open for writing (and so locked), as another process
 * using the image would. The lock is waited for in /proc/locks, a bounded number of polls.
 */
export async function whileHeld<T>(file: string, format: string, fn: () => Promise<T>): Promise<T> {
  const child = spawn('qemu-io', ['-f', format, '-c', 'sleep 600000', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    const { ino } = await stat(file);
    for (let i = 0; ; i++) {
      const locks = (await readFile('/proc/locks', 'utf8')).split('\n').filter((l) => new RegExp(`:${ino}\\s`).test(l));
      if (locks.length > 0) break;
      if (child.exitCode !== null || i >= 800) throw new Error(`qemu-io did not lock ${file}: ${output.trim()}`);
      await sleep(25);
    }
    return await fn();
  } finally {
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
  }
}
