import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { timeCommand, VDISK, type Benchmark } from './harness.js';

const TiB = 1024 ** 4;

/**
 * `vdisk map` against `qemu-img map` on a 1 TiB sparse raw file with 20,000 data extents (4 KiB
 * each, spread evenly): the cost of walking a large sparse file's holes.
 */
export function mapBenchmark(extents = 20_000, rounds = 5): Benchmark {
  let dir = '';
  let file = '';
  return {
    name: `map --output=json, 1 TiB sparse raw, ${extents} data extents`,
    goal: { max: 1.0 },
    unit: 's',
    rounds,
    async setup() {
      dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vdisk-bench-map-'));
      file = path.join(dir, 'sparse.raw');
      const fh = await fsp.open(file, 'w');
      await fh.truncate(TiB);
      const block = Buffer.alloc(4096, 0xa5);
      const stride = Math.floor(TiB / extents / 4096) * 4096;
      for (let i = 0; i < extents; i++) await fh.write(block, 0, block.length, i * stride + 65536);
      await fh.close();
    },
    async teardown() {
      await fsp.rm(dir, { recursive: true, force: true });
    },
    vdisk: { name: 'vdisk map', run: () => timeCommand(VDISK, ['map', '--output=json', '-f', 'raw', file]) },
    peer: { name: 'qemu-img map', run: () => timeCommand('qemu-img', ['map', '--output=json', '-f', 'raw', file]) },
  };
}
