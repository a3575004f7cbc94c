import assert from 'node:assert/strict';
import { run } from './oracles.js';

interface FioJob {
  error: number;
  read: { io_bytes: number };
  write: { io_bytes: number };
}

/**
 * fio's nbd engine (libnbd) on `uri` from two jobs at once, each on its own connection and its
 * own 16 MiB, 4 KiB blocks, every block written verified by crc32c; asserts fio saw no error and
 * read back every block it wrote.
 */
export async function fioVerify(uri: string, cwd: string, rw: 'randrw' | 'randwrite', iodepth: number): Promise<void> {
  const result = await run('fio', [
    '--name=verify', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, '--bs=4k', '--size=16m',
    '--numjobs=2', '--offset_increment=16m', `--iodepth=${iodepth}`, '--verify=crc32c', '--do_verify=1',
    // fio saves verify state files into its working directory; none wanted, and not in the repo.
    '--output-format=json', '--verify_state_save=0',
  ], { cwd });
  assert.equal(result.code, 0, result.stdout + result.stderr);
  // libnbd says hello on stdout before the JSON.
  const jobs = (JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as { jobs: FioJob[] }).jobs;
  assert.equal(jobs.length, 2);
  for (const job of jobs) {
    assert.equal(job.error, 0);
    assert.ok(job.write.io_bytes > 0 && job.read.io_bytes >= job.write.io_bytes, 'written blocks were read back to verify');
  }
}
