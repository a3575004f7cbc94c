import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { commandOutput, timeCommand, type Benchmark } from './harness.js';

const VDISK = fileURLToPath(new URL('../bin/vdisk.js', import.meta.url));
const MiB = 1024 * 1024;

/** qemu-io commands writing `count` runs of 2 MiB, one every 8 MiB from `start`, pattern `p`. */
function runs(count: number, start: number, p: number): string[] {
  return Array.from({ length: count }, (_, i) => ['-c', `write -P ${p} ${start + i * 8 * MiB} 2M`]).flat();
}

/**
 * Benchmark (c) of issue 4, on 4 GiB chains with 1 GiB of data to move (512 runs of 2 MiB, one
 * every 8 MiB), built by qemu-img and qemu-io:
 * - `vdisk stream` against `qemu-img rebase -b ''`, which copies the same: an overlay holding
 *   64 MiB of its own over a base holding the 1 GiB, streamed whole;
 * - `vdisk commit` against `qemu-img commit`: an overlay holding the 1 GiB over an empty base,
 *   committed and emptied.
 * Each round works on fresh copies (made before the clock starts), so neither tool finds the
 * other's output; the images are removed after the run.
 */
export function jobBenchmarks(rounds = 3): Benchmark[] {
  return [streamBenchmark(rounds), commitBenchmark(rounds)];
}

/** A scratch directory of its own for each benchmark, made by its setup and removed by its teardown. */
function scratch(): { file(name: string): string; qcow2(name: string, backing?: string): Promise<string>; make(): Promise<void>; remove(): Promise<void> } {
  let dir = '';
  const file = (name: string) => path.join(dir, name);
  return {
    file,
    qcow2: (name, backing) => commandOutput('qemu-img', ['create', '-q', '-f', 'qcow2', ...(backing ? ['-b', backing, '-F', 'qcow2'] : []), file(name), '4G']),
    make: async () => {
      dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vdisk-bench-jobs-'));
    },
    remove: () => fsp.rm(dir, { recursive: true, force: true }),
  };
}

/** The overlay (64 MiB of its own) streamed whole from a base holding the 1 GiB, on a fresh copy each time. */
function streamBenchmark(rounds: number): Benchmark {
  const s = scratch();
  const timed = (cmd: string, args: string[]) => async () => {
    await fsp.copyFile(s.file('top.qcow2'), s.file('work.qcow2'));
    const t = await timeCommand(cmd, args);
    await fsp.rm(s.file('work.qcow2'), { force: true });
    return t;
  };
  return {
    name: "stream 4 GiB chain, 1 GiB of backing data, against qemu-img rebase -b ''",
    goal: { max: 0.8 },
    unit: 's',
    rounds,
    setup: async () => {
      await s.make();
      await s.qcow2('base.qcow2');
      await commandOutput('qemu-io', ['-f', 'qcow2', ...runs(512, 0, 0x5a), s.file('base.qcow2')]);
      await s.qcow2('top.qcow2', 'base.qcow2');
      await commandOutput('qemu-io', ['-f', 'qcow2', ...runs(32, 4 * MiB, 0x6b), s.file('top.qcow2')]);
    },
    teardown: s.remove,
    vdisk: { name: 'vdisk stream', run: () => timed(process.execPath, [VDISK, 'stream', s.file('work.qcow2')])() },
    peer: { name: "qemu-img rebase -b ''", run: () => timed('qemu-img', ['rebase', '-q', '-b', '', s.file('work.qcow2')])() },
  };
}

/** The overlay holding the 1 GiB committed into an empty base and emptied, on fresh copies each time. */
function commitBenchmark(rounds: number): Benchmark {
  const s = scratch();
  const timed = (cmd: string, args: string[]) => async () => {
    await fsp.rm(s.file('base.qcow2'), { force: true });
    await s.qcow2('base.qcow2');
    await commandOutput('cp', ['--sparse=always', s.file('top.orig'), s.file('work.qcow2')]);
    const t = await timeCommand(cmd, args);
    await fsp.rm(s.file('work.qcow2'), { force: true });
    return t;
  };
  return {
    name: 'commit 4 GiB chain, 1 GiB of data, against qemu-img commit',
    goal: { max: 0.8 },
    unit: 's',
    rounds,
    setup: async () => {
      await s.make();
      await s.qcow2('base.qcow2');
      await s.qcow2('top.orig', 'base.qcow2');
      await commandOutput('qemu-io', ['-f', 'qcow2', ...runs(512, 4 * MiB, 0x7c), s.file('top.orig')]);
    },
    teardown: s.remove,
    vdisk: { name: 'vdisk commit', run: () => timed(process.execPath, [VDISK, 'commit', '-q', s.file('work.qcow2')])() },
    peer: { name: 'qemu-img commit', run: () => timed('qemu-img', ['commit', '-q', s.file('work.qcow2')])() },
  };
}
