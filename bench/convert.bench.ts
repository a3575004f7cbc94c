import { randomFillSync } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { commandOutput, timeCommand, type Benchmark } from './harness.js';

const VDISK = fileURLToPath(new URL('../bin/vdisk.js', import.meta.url));
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/**
 * `vdisk convert` against `qemu-img convert` (issue 6): a sparse 4 GiB image holding 512 MiB of
 * data in 2 MiB runs, qcow2 → raw and raw → qcow2. Each round writes a fresh target, removed
 * before the next one, so neither tool finds the other's file or its page cache.
 */
export function convertBenchmarks(rounds = 3): Benchmark[] {
  let dir = '';
  const file = (name: string) => path.join(dir, name);
  const setup = async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vdisk-bench-convert-'));
    const fh = await fsp.open(file('src.raw'), 'w');
    await fh.truncate(4 * GiB);
    const chunk = Buffer.alloc(2 * MiB);
    // 256 runs of 2 MiB, one every 16 MiB: 512 MiB of incompressible data.
    for (let i = 0; i < 256; i++) await fh.write(randomFillSync(chunk), 0, chunk.length, i * 16 * MiB);
    await fh.close();
    await commandOutput('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', file('src.raw'), file('src.qcow2')]);
  };
  const teardown = async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  };
  const timed = (cmd: string, args: string[], out: string) => async () => {
    await fsp.rm(out, { force: true });
    const t = await timeCommand(cmd, args);
    await fsp.rm(out, { force: true });
    return t;
  };
  const pair = (name: string, args: (out: string) => string[]): Benchmark => ({
    name: `convert ${name}, 4 GiB with 512 MiB of data`,
    goal: { max: 0.8 },
    unit: 's',
    rounds,
    setup,
    teardown,
    vdisk: { name: 'vdisk convert', run: () => timed(process.execPath, [VDISK, 'convert', ...args(file('out.vdisk'))], file('out.vdisk'))() },
    peer: { name: 'qemu-img convert', run: () => timed('qemu-img', ['convert', ...args(file('out.qemu'))], file('out.qemu'))() },
  });
  return [
    pair('qcow2 → raw', (out) => ['-f', 'qcow2', '-O', 'raw', file('src.qcow2'), out]),
    pair('raw → qcow2', (out) => ['-f', 'raw', '-O', 'qcow2', file('src.raw'), out]),
  ];
}
