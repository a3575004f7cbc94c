import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cpuCommand } from './convert.bench.js';
import { commandOutput, timeCommand, VDISK, type Benchmark } from './harness.js';

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
 * other's output; the images are removed after the run. Beside each wall-time pair, the same
 * pair's CPU time (user + system of the process and its threads, GNU time): on a shared
 * machine it moves less than the wall time, and it shows what Node costs beside the kernel.
 */
export function jobBenchmarks(rounds = 3): Benchmark[] {
  return (['wall', 'cpu'] as const).flatMap((measure) => [streamBenchmark(rounds, measure), commitBenchmark(rounds, measure)]);
}

type Measure = 'wall' | 'cpu';

/** The fresh copies on disk before the clock starts, so that neither tool pays for writing them back. */
function settle(...files: string[]): Promise<string> {
  return commandOutput('sync', files);
}

interface Scratch {
  file(name: string): string;
  /** A 4 GiB qcow2 image, with a backing file if named. */
  qcow2(name: string, backing?: string): Promise<string>;
}

/**
 * One job against its peer in a scratch directory of its own, made by the setup and removed by
 * the teardown; `prepare` makes the fresh copies each run works on, before the clock starts.
 */
function jobBenchmark(rounds: number, measure: Measure, o: {
  name: string;
  build(s: Scratch): Promise<void>;
  prepare(s: Scratch): Promise<void>;
  vdisk: { name: string; args(s: Scratch): string[] };
  peer: { name: string; args(s: Scratch): string[] };
}): Benchmark {
  let dir = '';
  const s: Scratch = {
    file: (name) => path.join(dir, name),
    qcow2: (name, backing) => commandOutput('qemu-img', ['create', '-q', '-f', 'qcow2', ...(backing ? ['-b', backing, '-F', 'qcow2'] : []), s.file(name), '4G']),
  };
  const timed = (cmd: string, args: string[]) => async () => {
    await o.prepare(s);
    const t = measure === 'wall' ? await timeCommand(cmd, args) : await cpuCommand(cmd, args);
    await fsp.rm(s.file('work.qcow2'), { force: true });
    return t;
  };
  return {
    name: measure === 'wall' ? o.name : `${o.name}: CPU time (user + sys)`,
    goal: measure === 'wall' ? { max: 0.8 } : {},
    unit: 's',
    rounds,
    requires: ['qemu-img', 'qemu-io', ...(measure === 'cpu' ? ['/usr/bin/time'] : [])],
    setup: async () => {
      dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vdisk-bench-jobs-'));
      await o.build(s);
    },
    teardown: () => fsp.rm(dir, { recursive: true, force: true }),
    vdisk: { name: o.vdisk.name, run: () => timed(VDISK, o.vdisk.args(s))() },
    peer: { name: o.peer.name, run: () => timed('qemu-img', o.peer.args(s))() },
  };
}

/** The overlay (64 MiB of its own) streamed whole from a base holding the 1 GiB, on a fresh copy each time. */
function streamBenchmark(rounds: number, measure: Measure): Benchmark {
  return jobBenchmark(rounds, measure, {
    name: "stream 4 GiB chain, 1 GiB of backing data, against qemu-img rebase -b ''",
    build: async (s) => {
      await s.qcow2('base.qcow2');
      await commandOutput('qemu-io', ['-f', 'qcow2', ...runs(512, 0, 0x5a), s.file('base.qcow2')]);
      await s.qcow2('top.qcow2', 'base.qcow2');
      await commandOutput('qemu-io', ['-f', 'qcow2', ...runs(32, 4 * MiB, 0x6b), s.file('top.qcow2')]);
    },
    prepare: async (s) => {
      await fsp.copyFile(s.file('top.qcow2'), s.file('work.qcow2'));
      await settle(s.file('work.qcow2'));
    },
    vdisk: { name: 'vdisk stream', args: (s) => ['stream', s.file('work.qcow2')] },
    peer: { name: "qemu-img rebase -b ''", args: (s) => ['rebase', '-q', '-b', '', s.file('work.qcow2')] },
  });
}

/** The overlay holding the 1 GiB committed into an empty base and emptied, on fresh copies each time. */
function commitBenchmark(rounds: number, measure: Measure): Benchmark {
  return jobBenchmark(rounds, measure, {
    name: 'commit 4 GiB chain, 1 GiB of data, against qemu-img commit',
    build: async (s) => {
      await s.qcow2('base.qcow2');
      await s.qcow2('top.orig', 'base.qcow2');
      await commandOutput('qemu-io', ['-f', 'qcow2', ...runs(512, 4 * MiB, 0x7c), s.file('top.orig')]);
    },
    prepare: async (s) => {
      await fsp.rm(s.file('base.qcow2'), { force: true });
      await s.qcow2('base.qcow2');
      await commandOutput('cp', ['--sparse=always', s.file('top.orig'), s.file('work.qcow2')]);
      await settle(s.file('base.qcow2'), s.file('work.qcow2'));
    },
    vdisk: { name: 'vdisk commit', args: (s) => ['commit', '-q', s.file('work.qcow2')] },
    peer: { name: 'qemu-img commit', args: (s) => ['commit', '-q', s.file('work.qcow2')] },
  });
}
