import { performance } from 'node:perf_hooks';
import { isAllZero } from '../src/core/zero-detect.js';
import type { Benchmark } from './harness.js';

const CHUNK = 1024 * 1024;
const TOTAL = 1024 * 1024 * 1024;

/**
 * Zero detection throughput against a memcmp baseline: isAllZero over 1 GiB of zeros in 1 MiB
 * chunks (the worst case: every byte must be read) versus Buffer.compare of two equal 1 MiB
 * buffers, which is libc memcmp.
 */
export function zeroDetectBenchmark(rounds = 7): Benchmark {
  const a = Buffer.alloc(CHUNK);
  const b = Buffer.alloc(CHUNK);
  const gibPerSec = (fn: () => boolean) => {
    const start = performance.now();
    let ok = true;
    for (let done = 0; done < TOTAL; done += CHUNK) ok = fn() && ok;
    if (!ok) throw new Error('zero detection gave a wrong answer');
    return TOTAL / 1024 ** 3 / ((performance.now() - start) / 1000);
  };
  return {
    name: 'zero detection, 1 GiB of zeros in 1 MiB buffers',
    goal: { min: 0.5 },
    unit: 'GiB/s',
    rounds,
    vdisk: { name: 'isAllZero', run: async () => gibPerSec(() => isAllZero(a)) },
    peer: { name: 'memcmp (Buffer.compare)', run: async () => gibPerSec(() => Buffer.compare(a, b) === 0) },
  };
}
