import { execFileSync } from 'node:child_process';
import { promises as fsp, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fixture, warm } from './convert.bench.js';
import { timeCommand, VDISK, type Benchmark } from './harness.js';

const SOURCE = fileURLToPath(new URL('./floor/copy-floor.c', import.meta.url));

/**
 * What the convert goals are measured against, for scale (issue 6): the least any program can
 * take for convert's qcow2 → raw case here, and the least a Node program can take to start.
 *
 * - The copy floor: a C program (floor/copy-floor.c) doing nothing but copy_file_range of the
 *   source's data extents (from qemu-img map) into a new sparse raw file, on the same fixture and
 *   page-cache state as the convert benchmark, against qemu-img convert of the same.
 * - The start-up floor: `vdisk --version` (Node and the launcher, nothing opened) against
 *   `qemu-img --version`.
 *
 * If the copy floor alone is near 0.8x of qemu-img convert, no program that also starts Node can
 * reach 0.8x.
 */
export function copyFloorBenchmarks(rounds = 7): Benchmark[] {
  let dir = '';
  let floor = '';
  let extents = '';
  const setup = async () => {
    const f = fixture();
    dir = path.join(f.dir, 'floor');
    await fsp.mkdir(dir, { recursive: true });
    floor = path.join(dir, 'copy-floor');
    execFileSync('cc', ['-O2', '-o', floor, SOURCE]);
    const map = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', '-f', 'qcow2', f.qcow2]).toString()) as
      { start: number; length: number; data: boolean; zero: boolean; offset?: number }[];
    extents = path.join(dir, 'extents');
    writeFileSync(extents, map.filter((e) => e.data && !e.zero && e.offset !== undefined).map((e) => `${e.start} ${e.offset} ${e.length}\n`).join(''));
  };
  const copy = (cmd: () => string, args: (out: string) => string[], name: string) => async () => {
    const out = path.join(dir, name);
    await fsp.rm(out, { force: true });
    warm(fixture().qcow2);
    const t = await timeCommand(cmd(), args(out));
    await fsp.rm(out, { force: true });
    return t;
  };
  return [
    {
      name: 'copy floor: qcow2 → raw by copy_file_range alone (C), 4 GiB with 512 MiB of data, against qemu-img convert',
      goal: {},
      unit: 's',
      rounds,
      requires: ['qemu-img', 'cc'],
      setup,
      vdisk: { name: 'copy-floor (C)', run: copy(() => floor, (out) => [fixture().qcow2, out, String(4 * 1024 ** 3), extents], 'out.floor') },
      peer: { name: 'qemu-img convert', run: copy(() => 'qemu-img', (out) => ['convert', '-f', 'qcow2', '-O', 'raw', fixture().qcow2, out], 'out.qemu') },
    },
    {
      name: 'start-up floor: vdisk --version against qemu-img --version',
      goal: {},
      unit: 's',
      rounds,
      vdisk: { name: 'vdisk --version', run: () => timeCommand(VDISK, ['--version']) },
      peer: { name: 'qemu-img --version', run: () => timeCommand('qemu-img', ['--version']) },
    },
  ];
}
