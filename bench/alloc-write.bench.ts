import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { commandOutput, VDISK, type Benchmark } from './harness.js';

const KiB = 1024;
const GiB = 1024 ** 3;
const CLUSTER = 64 * KiB;

/** What the requests do: qemu-img bench's arguments and how many. */
interface Workload {
  name: string;
  args: string[];
  count: number;
}

const WORKLOADS: Workload[] = [
  // 128 MiB in 4 KiB requests: 2048 new clusters, each filled by 16 writes.
  { name: '4 KiB sequential writes', args: ['-s', String(4 * KiB)], count: 32768 },
  // A step of 7919 clusters (prime, so coprime with the 16,384 clusters of 1 GiB): every
  // request lands in a cluster of its own, as random writes into a fresh image do.
  { name: '4 KiB writes, one per new cluster', args: ['-s', String(4 * KiB), '-S', String(7919 * CLUSTER)], count: 16384 },
];

/** How each tool opens the image: the filename, or --image-opts naming the stack. */
interface Variant {
  name: string;
  vdisk: (file: string) => string[];
  qemu: (file: string) => string[];
}

const plain = (file: string) => ['-f', 'qcow2', file];
const preallocate = (file: string) => ['--image-opts', `driver=qcow2,file.driver=preallocate,file.file.driver=file,file.file.filename=${file}`];

const VARIANTS: Variant[] = [
  { name: 'allocate path (default)', vdisk: plain, qemu: plain },
  {
    name: 'without the allocate path (alloc-space=off)',
    vdisk: (file) => ['--image-opts', `driver=qcow2,alloc-space=off,file.driver=file,file.filename=${file}`],
    qemu: plain,
  },
  { name: 'allocate path over the preallocate filter', vdisk: preallocate, qemu: preallocate },
];

/**
 * A run on an image made fresh for it (the first write into every cluster allocates it):
 * operations per second as the tool reports them, from its "Run completed in N seconds." line,
 * which times the requests only (after the open, before the close).
 */
async function freshRun(dir: string, cmd: string[], w: Workload, image: (file: string) => string[], cache: string): Promise<number> {
  const file = path.join(dir, `fresh-${process.hrtime.bigint()}.qcow2`);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(GiB)]);
  try {
    const out = await commandOutput(cmd[0]!, [...cmd.slice(1), 'bench', '-w', '-t', cache, ...w.args, '-c', String(w.count), ...image(file)]);
    const m = /Run completed in ([0-9.]+) seconds\./.exec(out);
    if (!m) throw new Error(`no "Run completed" line from ${cmd.join(' ')}: ${out.trim()}`);
    return w.count / Math.max(Number(m[1]), 0.001);
  } finally {
    rmSync(file, { force: true });
  }
}

/**
 * Issue 4 (b): 4 KiB sequential writes (qemu-img bench -w, depth 64) into a fresh 1 GiB qcow2,
 * and for contrast 4 KiB writes that each land in a new cluster; vdisk beside qemu-img on an
 * equally fresh image each round: with the allocate path (a new cluster's untouched part
 * zeroed by fallocate rather than written), without it (zero buffers, alloc-space=off; QEMU
 * has no such switch and keeps its own path), and over the preallocate filter (both tools).
 * With the page cache (writeback) and without (none). No warm-up: every run starts afresh.
 */
export function allocWriteBenchmarks(rounds = 3): Benchmark[] {
  let dir = '';
  const list: Benchmark[] = [];
  for (const w of WORKLOADS) for (const cache of ['writeback', 'none']) {
    for (const v of VARIANTS) {
      list.push({
        name: `bench: ${w.name} into a fresh qcow2, ${v.name}, -t ${cache} (-c ${w.count})`,
        goal: {},
        unit: 'ops/s',
        rounds,
        warmup: false,
        requires: ['qemu-img'],
        async setup() {
          dir = mkdtempSync(path.join(os.tmpdir(), 'vdisk-bench-alloc-'));
        },
        async teardown() {
          rmSync(dir, { recursive: true, force: true });
        },
        vdisk: { name: 'vdisk bench', run: () => freshRun(dir, [VDISK], w, v.vdisk, cache) },
        peer: { name: 'qemu-img bench', run: () => freshRun(dir, ['qemu-img'], w, v.qemu, cache) },
      });
    }
  }
  return list;
}
