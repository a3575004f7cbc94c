import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { commandOutput, maxRssCommand, VDISK, type Benchmark } from './harness.js';

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const TiB = 1024 ** 4;
const CLUSTER = 64 * KiB;
/**
 * qemu-img bench has no random mode. A step of a prime number of clusters scatters the offsets:
 * 7919 is coprime with the 65,536 clusters of 4 GiB, so (i × 7919) mod 65,536 visits every
 * cluster once before any repeats, in no useful order for a read-ahead.
 */
const RANDOM_STEP = 7919 * CLUSTER;
/** The same over 1 TiB (2^24 clusters): the largest prime below INT_MAX / 64 KiB. */
const RANDOM_STEP_1T = 32749 * CLUSTER;

interface Images {
  dir: string;
  qcow2: string;
  raw: string;
  /** 1 TiB qcow2, nothing allocated. */
  empty: string;
  /** 1 TiB qcow2, one cluster of data in each 512 MiB (so every L2 table exists). */
  big: string;
}

type BigImage = 'empty' | 'big';
const DESCRIBE: Record<BigImage, string> = {
  empty: 'an empty 1 TiB qcow2',
  big: 'a 1 TiB qcow2 with all 2048 L2 tables',
};

let images: Images | undefined;

/**
 * The images every benchmark here shares, made once per process with QEMU's own tools (and
 * removed at exit): a 4 GiB qcow2 and a 4 GiB raw file, written from start to end so reads hit
 * allocated clusters; for the memory measurement an empty 1 TiB qcow2 and one with a 64 KiB
 * cluster in each 512 MiB (128 MiB allocated, 128 MiB of L2 tables: four times the L2 cache).
 */
function fixture(): Images {
  if (images) return images;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vdisk-bench-qemu-img-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const qemu = (...args: string[]) => execFileSync('qemu-img', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  const img: Images = {
    dir, qcow2: path.join(dir, 'disk.qcow2'), raw: path.join(dir, 'disk.raw'), empty: path.join(dir, 'empty.qcow2'), big: path.join(dir, 'big.qcow2'),
  };
  console.error('  creating a 4 GiB qcow2, a 4 GiB raw file (both written in full) and two sparse 1 TiB qcow2 images');
  qemu('create', '-q', '-f', 'qcow2', img.qcow2, '4G');
  qemu('create', '-q', '-f', 'raw', img.raw, '4G');
  qemu('create', '-q', '-f', 'qcow2', img.empty, '1T');
  qemu('create', '-q', '-f', 'qcow2', img.big, '1T');
  // cache=unsafe: no flushes, so QEMU's metadata ordering does not make the fill wait on the disk.
  const fill = ['bench', '-t', 'unsafe', '-w', '--pattern=165', '-s', '1M', '-c', String((4 * GiB) / MiB), '-d', '8'];
  qemu(...fill, '-f', 'qcow2', img.qcow2);
  qemu(...fill, '-f', 'raw', img.raw);
  // One 64 KiB cluster in each 512 MiB: 2048 L2 tables (128 MiB of them) for the caches to churn.
  qemu('bench', '-t', 'unsafe', '-w', '--pattern=90', '-s', '64K', '-S', '512M', '-c', String(TiB / (512 * MiB)), '-f', 'qcow2', img.big);
  // What both tools read comes from the page cache; nothing is still being written back.
  execFileSync('sync');
  images = img;
  return img;
}

/**
 * Operations per second as each tool reports them: COUNT over the seconds of its "Run completed
 * in N seconds." line, which both time from the first request to the last completion, after the
 * image is open (Node's start-up, ~60 ms here, is outside, as QEMU's own is).
 */
async function opsPerSecond(cmd: string, args: string[], count: number): Promise<number> {
  const out = await commandOutput(cmd, args);
  const m = /Run completed in ([0-9.]+) seconds\./.exec(out);
  if (!m) throw new Error(`no "Run completed" line from ${cmd}: ${out.trim()}`);
  // Three decimals: a run under 1 ms would read as 0 s.
  return count / Math.max(Number(m[1]), 0.001);
}

/** One `bench` workload on one image, vdisk and qemu-img with identical arguments. */
function cliBenchmark(name: string, format: 'qcow2' | 'raw', args: string[], count: number, rounds: number): Benchmark {
  let file = '';
  const argv = () => ['bench', '-f', format, ...args, '-c', String(count), file];
  return {
    name: `bench: ${name}, 4 GiB ${format} (${args.join(' ')} -c ${count})`,
    goal: { min: 1.0 },
    unit: 'ops/s',
    rounds,
    requires: ['qemu-img'],
    async setup() {
      const img = fixture();
      file = format === 'qcow2' ? img.qcow2 : img.raw;
    },
    vdisk: { name: 'vdisk bench', run: () => opsPerSecond(VDISK, argv(), count) },
    peer: { name: 'qemu-img bench', run: () => opsPerSecond('qemu-img', argv(), count) },
  };
}

const scatteredReads = (count: number, file: string) => ['bench', '-f', 'qcow2', '-s', '4K', '-S', String(RANDOM_STEP_1T), '-c', String(count), file];

/**
 * Peak RSS of vdisk bench doing scattered 4 KiB reads across a 1 TiB qcow2 at two request counts:
 * a request leaves nothing behind and the L2 cache is bounded, so the figure should not grow
 * with the count. On the empty image no L2 table is ever read (the request path alone); on the
 * other every request needs one of 2048 tables and most miss the cache. Both counts are past
 * the warm-up: V8 grows its young generation with the allocation rate up to a fixed cap (48 MiB),
 * which the empty image's fast requests reach only after ~2M requests (measured: 64, 71, 88 and
 * 88 MiB at 200k, 1M, 3M and 6M). The question is whether memory keeps growing, not how fast
 * the heap settles. A measurement of vdisk against itself, not a race.
 */
function flatMemoryBenchmark(image: BigImage, small: number, large: number): Benchmark {
  let file = '';
  return {
    name: `bench: peak RSS, 4 KiB scattered reads over ${DESCRIBE[image]}, ${large} vs ${small} requests`,
    goal: { max: 1.1 },
    unit: 'MiB',
    rounds: 1,
    warmup: false,
    requires: ['qemu-img', '/usr/bin/time'],
    async setup() {
      file = fixture()[image];
    },
    vdisk: { name: `vdisk bench -c ${large}`, run: () => maxRssCommand(VDISK, scatteredReads(large, file)) },
    peer: { name: `vdisk bench -c ${small}`, run: () => maxRssCommand(VDISK, scatteredReads(small, file)) },
  };
}

/** The same workload's peak RSS beside qemu-img's, for scale (no goal: Node alone takes ~45 MiB). */
function memoryBesideQemuBenchmark(image: BigImage, count: number): Benchmark {
  let file = '';
  return {
    name: `bench: peak RSS, 4 KiB scattered reads over ${DESCRIBE[image]}, ${count} requests`,
    goal: {},
    unit: 'MiB',
    rounds: 1,
    warmup: false,
    requires: ['qemu-img', '/usr/bin/time'],
    async setup() {
      file = fixture()[image];
    },
    vdisk: { name: 'vdisk bench', run: () => maxRssCommand(VDISK, scatteredReads(count, file)) },
    peer: { name: 'qemu-img bench', run: () => maxRssCommand('qemu-img', scatteredReads(count, file)) },
  };
}

/**
 * `vdisk bench` beside `qemu-img bench` (same images, same arguments, same run): 4 KiB random
 * reads and writes and 1 MiB sequential reads on a 4 GiB qcow2 and a 4 GiB raw file, whole
 * process wall time; then vdisk's peak memory over 1 TiB qcow2 images at two request counts.
 */
export function qemuImgBenchBenchmarks(rounds = 5): Benchmark[] {
  const random = ['-s', '4K', '-S', String(RANDOM_STEP)];
  const list: Benchmark[] = [];
  for (const format of ['qcow2', 'raw'] as const) {
    list.push(
      cliBenchmark('4 KiB random reads', format, random, 100_000, rounds),
      cliBenchmark('4 KiB random writes', format, ['-w', ...random], 100_000, rounds),
      cliBenchmark('1 MiB sequential reads', format, ['-s', '1M'], 2048, rounds),
    );
  }
  list.push(
    flatMemoryBenchmark('empty', 3_000_000, 6_000_000),
    flatMemoryBenchmark('big', 200_000, 1_000_000),
    memoryBesideQemuBenchmark('big', 200_000),
  );
  return list;
}
