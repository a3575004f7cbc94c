import { spawn, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { BlockNode } from '../src/core/block-node.js';
import { createQcow2 } from '../src/drivers/format/qcow2/create.js';
import { open } from '../src/registry/index.js';
import type { Benchmark, Contender } from './harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CLUSTER = 64 * KiB;
/** The backing image: random data (no holes, so every copy reads it over the wire). */
const BACKING_SIZE = 64 * MiB;
/** nbdkit's delay filter holds every read this long: a remote backing image. */
const READ_DELAY = '5ms';

interface Fixture {
  dir: string;
  socket: string;
  server: ChildProcess;
}

let fixture: Fixture | undefined;
let users = 0;

/** The backing image served by `nbdkit --filter=delay file … rdelay=5ms` on a Unix socket. */
async function startBacking(): Promise<Fixture> {
  users++;
  if (fixture) return fixture;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vdisk-bench-cor-'));
  const raw = path.join(dir, 'backing.raw');
  const data = Buffer.alloc(BACKING_SIZE);
  randomFillSync(data);
  await writeFile(raw, data);
  const socket = path.join(dir, 'backing.sock');
  const server = spawn('nbdkit', ['-f', '-U', socket, '--filter=delay', 'file', raw, `rdelay=${READ_DELAY}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  server.stderr!.on('data', (d) => (err += d));
  for (let tries = 0; !(existsSync(socket) && (await connects(socket))); tries++) {
    if (server.exitCode !== null || tries > 500) throw new Error(`nbdkit did not start: ${err.trim()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  fixture = { dir, socket, server };
  return fixture;
}

async function stopBacking(): Promise<void> {
  if (--users > 0 || !fixture) return;
  const { server, dir } = fixture;
  fixture = undefined;
  if (server.exitCode === null) {
    const exited = new Promise((resolve) => server.once('exit', resolve));
    server.kill('SIGTERM');
    await exited;
  }
  await rm(dir, { recursive: true, force: true });
}

function connects(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    c.once('connect', () => (c.destroy(), resolve(true)));
    c.once('error', () => resolve(false));
  });
}

let serial = 0;

/** A fresh, empty qcow2 top image over the served backing image, opened with copy-on-read. */
async function freshTop(serialise: 'cluster' | 'request'): Promise<{ node: BlockNode; file: string }> {
  const f = fixture!;
  const file = path.join(f.dir, `top-${++serial}.qcow2`);
  await createQcow2({
    filename: file, size: BACKING_SIZE,
    options: { cluster_size: String(CLUSTER), backing_file: `nbd+unix:///?socket=${f.socket}`, backing_fmt: 'raw' },
  });
  const node = await open({ driver: 'copy-on-read', serialise, file: { driver: 'qcow2', file } });
  return { node, file };
}

/**
 * One timed run: `readers` in parallel, each issuing its reads one after another on a fresh top
 * image. Returns reads per second over the read phase only (opening and closing are outside).
 */
async function timedReads(serialise: 'cluster' | 'request', plan: { offset: number; length: number }[][], lockstep: boolean): Promise<number> {
  const { node, file } = await freshTop(serialise);
  try {
    // One copy outside the measured range first: the top's first allocation (its L2 table and
    // refcount block) is a one-off that would weigh on a short run more than on a long one.
    await node.read(BACKING_SIZE - CLUSTER, new Uint8Array(CLUSTER));
    let reads = 0;
    const start = performance.now();
    if (lockstep) {
      // Round r: every reader issues its r-th read together with the others, then all wait.
      for (let r = 0; r < plan[0]!.length; r++) {
        await Promise.all(plan.map((mine) => node.read(mine[r]!.offset, new Uint8Array(mine[r]!.length))));
        reads += plan.length;
      }
    } else {
      await Promise.all(plan.map(async (mine) => {
        for (const r of mine) {
          await node.read(r.offset, new Uint8Array(r.length));
          reads++;
        }
      }));
    }
    return reads / ((performance.now() - start) / 1000);
  } finally {
    await node.close();
    await rm(file, { force: true });
  }
}

/** `readers` readers over disjoint stretches of the first `total` clusters, one cluster per read. */
function disjointPlan(readers: number, total: number): { offset: number; length: number }[][] {
  const per = total / readers;
  return Array.from({ length: readers }, (_, i) => Array.from({ length: per }, (_, j) => ({ offset: (i * per + j) * CLUSTER, length: CLUSTER })));
}

/**
 * 8 readers, each read 8 clusters long and half over the next reader's: in round r reader i reads
 * clusters [base + 4i, base + 4i + 8), where base moves past all of them every round.
 */
function overlappingPlan(rounds: number): { offset: number; length: number }[][] {
  return Array.from({ length: 8 }, (_, i) => Array.from({ length: rounds }, (_, r) => ({ offset: (r * 40 + 4 * i) * CLUSTER, length: 8 * CLUSTER })));
}

function contender(name: string, run: () => Promise<number>): Contender {
  return { name, run };
}

const common = {
  unit: 'ops/s' as const,
  rounds: 5,
  requires: ['nbdkit'],
  setup: async () => void (await startBacking()),
  teardown: stopBacking,
};

/**
 * Copy-on-read over a backing image behind a 5 ms-per-read delay (issue 4, benchmark a), vdisk
 * against itself: (1) 8 readers of disjoint ranges against one reader (goal 4x the reads per
 * second), (2) 8 partly overlapping readers with per-cluster serialisation against per-request
 * serialisation, QEMU's way (goal 1.5x).
 */
export function copyOnReadBenchmarks(): Benchmark[] {
  return [
    {
      ...common,
      name: 'copy-on-read: 128 one-cluster reads over a 5 ms backing, 8 disjoint readers vs 1 reader',
      goal: { min: 4 },
      vdisk: contender('8 readers', () => timedReads('cluster', disjointPlan(8, 128), false)),
      peer: contender('1 reader', () => timedReads('cluster', disjointPlan(1, 128), false)),
    },
    {
      ...common,
      name: 'copy-on-read: 8 partly overlapping 512 KiB readers over a 5 ms backing, per-cluster vs per-request serialisation',
      goal: { min: 1.5 },
      vdisk: contender('per-cluster', () => timedReads('cluster', overlappingPlan(8), true)),
      peer: contender('per-request', () => timedReads('request', overlappingPlan(8), true)),
    },
  ];
}
