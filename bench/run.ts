import { execFileSync } from 'node:child_process';
import { formatResults, runBenchmark, type Benchmark, type Result } from './harness.js';
import { BenchmarkSkipped, convertBenchmarks } from './convert.bench.js';
import { copyFloorBenchmarks } from './copy-floor.bench.js';
import { jobBenchmarks } from './jobs.bench.js';
import { copyOnReadBenchmarks } from './copy-on-read.bench.js';
import { mapBenchmark } from './map.bench.js';
import { nbdBenchmarks } from './nbd.bench.js';
import { qemuImgBenchBenchmarks } from './qemu-img-bench.bench.js';
import { zeroDetectBenchmark } from './zero-detect.bench.js';
import { allocWriteBenchmarks } from './alloc-write.bench.js';

/** `npm run bench [-- NAME-FILTER]`: every benchmark, vdisk and its peer side by side. */
const filter = process.argv[2];
// The case (20,000 extents) is dominated by Node's start-up; 200,000 shows the per-extent cost.
const benchmarks: Benchmark[] = [mapBenchmark(20_000), mapBenchmark(200_000, 3), zeroDetectBenchmark(), ...qemuImgBenchBenchmarks(), ...nbdBenchmarks(), ...convertBenchmarks(), ...copyFloorBenchmarks(), ...copyOnReadBenchmarks()];
benchmarks.push(...jobBenchmarks());

function have(cmd: string): boolean {
  try {
    execFileSync(cmd, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

// Issue 4 (b): the qcow2 allocate path and the preallocate filter.
benchmarks.push(...allocWriteBenchmarks());

const results: Result[] = [];
for (const b of benchmarks) {
  if (filter && !b.name.includes(filter)) continue;
  const missing = (b.requires ?? (b.peer.name.startsWith('qemu-img') ? ['qemu-img'] : [])).filter((tool) => !have(tool));
  if (missing.length > 0) {
    console.error(`skipping '${b.name}': ${missing.join(', ')} not installed (Debian: qemu-utils, time)`);
    continue;
  }
  console.error(`running: ${b.name} (${b.rounds} rounds)`);
  try {
    results.push(await runBenchmark(b));
  } catch (err) {
    // A setup that finds the machine cannot run it (a loop mount refused) skips it.
    if (!(err instanceof BenchmarkSkipped)) throw err;
    console.error(`skipping '${b.name}': ${err.message}`);
  }
}
console.log(formatResults(results));
