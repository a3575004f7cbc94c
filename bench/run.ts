import { execFileSync } from 'node:child_process';
import { formatResults, runBenchmark, type Benchmark, type Result } from './harness.js';
import { mapBenchmark } from './map.bench.js';
import { zeroDetectBenchmark } from './zero-detect.bench.js';

/** `npm run bench [-- NAME-FILTER]`: every benchmark, vdisk and its peer side by side. */
const filter = process.argv[2];
// The case (20,000 extents) is dominated by Node's start-up; 200,000 shows the per-extent cost.
const benchmarks: Benchmark[] = [mapBenchmark(20_000), mapBenchmark(200_000, 3), zeroDetectBenchmark()];

function have(cmd: string): boolean {
  try {
    execFileSync(cmd, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const results: Result[] = [];
for (const b of benchmarks) {
  if (filter && !b.name.includes(filter)) continue;
  if (b.peer.name.startsWith('qemu-img') && !have('qemu-img')) {
    console.error(`skipping '${b.name}': qemu-img is not installed (Debian: qemu-utils)`);
    continue;
  }
  console.error(`running: ${b.name} (${b.rounds} rounds)`);
  results.push(await runBenchmark(b));
}
console.log(formatResults(results));
