import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { commandOutput, type Benchmark, type Contender } from './harness.js';

/** The vdisk entry point timed (VDISK_BIN overrides it, e.g. to compare two builds). */
const VDISK = process.env.VDISK_BIN ?? fileURLToPath(new URL('../bin/vdisk.js', import.meta.url));
const GiB = 1024 ** 3;

type Format = 'qcow2' | 'raw';
type ServerName = 'vdisk serve' | 'qemu-nbd' | 'nbdkit file';

/**
 * The three workloads of issue 5, each a fixed amount of I/O (fio's io_size) so that runs compare
 * however fast they go. fio's default randrepeat=1 makes every run visit the same offsets.
 * Sequential reads go 8 deep (a read-ahead's depth; qemu-nbd serves at most 16 per client).
 */
const WORKLOADS = {
  '4 KiB random reads, iodepth 32': { args: ['--rw=randread', '--bs=4k', '--iodepth=32', '--io_size=256m'], unit: 'ops/s' },
  '4 KiB random writes, iodepth 32': { args: ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--io_size=256m'], unit: 'ops/s' },
  '1 MiB sequential reads, iodepth 8': { args: ['--rw=read', '--bs=1m', '--iodepth=8', '--io_size=1g'], unit: 'GiB/s' },
} as const;
type Workload = keyof typeof WORKLOADS;

interface Images {
  dir: string;
  qcow2: string;
  raw: string;
}

let images: Images | undefined;

/**
 * A 1 GiB qcow2 and a 1 GiB raw file, written from start to end with qemu-img (so reads hit
 * data and writes overwrite allocated clusters), made once per process and removed at exit.
 */
function fixture(): Images {
  if (images) return images;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vdisk-bench-nbd-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const qemu = (...args: string[]) => execFileSync('qemu-img', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  const img: Images = { dir, qcow2: path.join(dir, 'disk.qcow2'), raw: path.join(dir, 'disk.raw') };
  console.error('  creating a 1 GiB qcow2 and a 1 GiB raw file, both written in full');
  for (const format of ['qcow2', 'raw'] as const) {
    qemu('create', '-q', '-f', format, img[format], '1G');
    qemu('bench', '-t', 'unsafe', '-w', '--pattern=165', '-s', '1M', '-c', '1024', '-d', '8', '-f', format, img[format]);
  }
  execFileSync('sync');
  images = img;
  return img;
}

/**
 * The server command line, each with its defaults: vdisk serve and qemu-nbd both default to
 * cache=writeback, aio=threads (vdisk has its own I/O queue instead), discard=ignore and
 * detect-zeroes=off; nbdkit's file plugin uses the page cache (cache=default) on its 16 threads.
 */
function serverCommand(server: ServerName, format: Format, file: string, socket: string): [string, string[]] {
  switch (server) {
    case 'vdisk serve': return [process.execPath, [VDISK, 'serve', '-t', '-f', format, '-k', socket, file]];
    case 'qemu-nbd': return ['qemu-nbd', ['-t', '-f', format, '-k', socket, file]];
    case 'nbdkit file': return ['nbdkit', ['-f', '-U', socket, 'file', file]];
  }
}

let serial = 0;

/** Starts a server and resolves once its socket takes connections. */
async function startServer(server: ServerName, format: Format, file: string): Promise<{ proc: ChildProcess; socket: string }> {
  const socket = path.join(fixture().dir, `s${++serial}.sock`);
  const [cmd, args] = serverCommand(server, format, file, socket);
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  for (let tries = 0; ; tries++) {
    if (hasExited(proc)) throw new Error(`${cmd} exited (${proc.exitCode ?? proc.signalCode}): ${err.trim()}`);
    // The file appears at bind, a moment before listen: a connection proves the server is up.
    if (existsSync(socket) && (await connects(socket))) return { proc, socket };
    if (tries > 500) {
      await stopServer(proc);
      throw new Error(`${cmd} did not listen on ${socket}: ${err.trim()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

const hasExited = (proc: ChildProcess) => proc.exitCode !== null || proc.signalCode !== null;

function connects(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    c.once('connect', () => (c.destroy(), resolve(true)));
    c.once('error', () => resolve(false));
  });
}

/** SIGTERM, then waits for the exit: every server here flushes and closes its image on it. */
async function stopServer(proc: ChildProcess): Promise<void> {
  if (hasExited(proc)) return;
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  proc.kill('SIGTERM');
  await exited;
}

interface FioSide {
  iops: number;
  bw_bytes: number;
  io_bytes: number;
  total_ios: number;
}

const TICKS_PER_SECOND = 100;

/**
 * CPU seconds a process has used, all its threads, user and system (/proc/PID/stat fields 14
 * and 15, in clock ticks; Linux's USER_HZ is 100 wherever this benchmark runs).
 */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/**
 * One run: a fresh server, fio's nbd engine over its Unix socket, the server stopped. Returns
 * what fio measured (IOPS, or GiB/s for sequential reads), from the first request to the last
 * reply: the server's start-up and fio's connection are outside it.
 */
async function fioRun(server: ServerName, format: Format, workload: Workload): Promise<number> {
  const file = fixture()[format];
  const { proc, socket } = await startServer(server, format, file);
  let out: string;
  let cpu: number;
  try {
    // The server's CPU while fio runs, so each row can say what a request costs the server.
    const before = cpuSeconds(proc.pid!);
    out = await commandOutput('fio', [
      '--name=nbd', '--ioengine=nbd', `--uri=nbd+unix:///?socket=${socket}`, '--size=1g',
      ...WORKLOADS[workload].args, '--output-format=json',
    ]);
    cpu = cpuSeconds(proc.pid!) - before;
  } finally {
    await stopServer(proc);
  }
  // libnbd says hello on stdout before the JSON.
  const job = (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { error: number; read: FioSide; write: FioSide }[] }).jobs[0]!;
  if (job.error !== 0) throw new Error(`fio against ${server} failed with error ${job.error}`);
  const side = job.write.io_bytes > 0 ? job.write : job.read;
  console.error(`    ${server}, ${format}, ${workload}: ${Math.round(side.iops)} ops/s, server CPU ${(cpu * 1e6 / side.total_ios).toFixed(1)} µs per request`);
  return WORKLOADS[workload].unit === 'ops/s' ? side.iops : side.bw_bytes / GiB;
}

function contender(server: ServerName, format: Format, workload: Workload): Contender {
  return { name: server, run: () => fioRun(server, format, workload) };
}

function nbdBenchmark(format: Format, peer: ServerName, workload: Workload, goal: Benchmark['goal'], rounds: number): Benchmark {
  return {
    name: `nbd: ${workload}, 1 GiB ${format}, fio --ioengine=nbd over a Unix socket, vs ${peer}`,
    goal,
    unit: WORKLOADS[workload].unit,
    rounds,
    requires: ['fio', 'qemu-img', peer === 'qemu-nbd' ? 'qemu-nbd' : 'nbdkit'],
    vdisk: contender('vdisk serve', format, workload),
    peer: contender(peer, format, workload),
  };
}

/**
 * `vdisk serve` beside its peers under fio's nbd engine (issue 5): on qcow2 against qemu-nbd
 * (goal 1.2x), on raw against nbdkit's file plugin (goal 1.0x) and qemu-nbd (for scale). Five
 * short rounds rather than three long ones: on a shared machine the load shifts within seconds,
 * and more alternations give a steadier median.
 */
export function nbdBenchmarks(rounds = 5): Benchmark[] {
  const list: Benchmark[] = [];
  const workloads = Object.keys(WORKLOADS) as Workload[];
  for (const w of workloads) list.push(nbdBenchmark('qcow2', 'qemu-nbd', w, { min: 1.2 }, rounds));
  for (const w of workloads) list.push(nbdBenchmark('raw', 'nbdkit file', w, { min: 1.0 }, rounds));
  for (const w of workloads) list.push(nbdBenchmark('raw', 'qemu-nbd', w, {}, rounds));
  return list;
}
