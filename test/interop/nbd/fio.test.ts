import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { serveOnSocket } from '../../helpers/nbd-server.js';
import { needTools, run, runOk } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

/*
 * fio's nbd engine (libnbd) with random reads and writes from two jobs at once, on two
 * connections to one qcow2 export, every written block verified by crc32c: no verify error, and
 * qemu-img check finds the image clean once the server has stopped.
 */

let tmp: TmpDir;
before(async () => {
  tmp = await makeTmpDir('vdisk-fio-');
});
after(() => tmp.cleanup());

interface FioJob {
  error: number;
  read: { io_bytes: number };
  write: { io_bytes: number };
}

it('randrw with verify=crc32c from two jobs: no verify errors, a clean image', async (t) => {
  if (!needTools(t, 'fio', 'qemu-img')) return;
  const image = tmp.path('fio.qcow2');
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
  const s = await serveOnSocket(tmp.dir, ['-e', '0', '-f', 'qcow2', image]);
  let result;
  try {
    result = await run('fio', [
      '--name=verify', '--ioengine=nbd', `--uri=${s.uri}`, '--rw=randrw', '--bs=4k', '--size=16m',
      '--numjobs=2', '--offset_increment=16m', '--iodepth=16', '--verify=crc32c', '--do_verify=1',
      // fio saves verify state files into its working directory; none wanted, and not in the repo.
      '--output-format=json', '--verify_state_save=0',
    ], { cwd: tmp.dir });
  } finally {
    const exit = await s.proc.stop();
    assert.equal(exit.code, 0, exit.stderr);
  }
  assert.equal(result.code, 0, result.stdout + result.stderr);
  // libnbd says hello on stdout before the JSON.
  const jobs = (JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as { jobs: FioJob[] }).jobs;
  assert.equal(jobs.length, 2);
  for (const job of jobs) {
    assert.equal(job.error, 0);
    assert.ok(job.write.io_bytes > 0 && job.read.io_bytes >= job.write.io_bytes, 'written blocks were read back to verify');
  }
  const check = await run('qemu-img', ['check', '-f', 'qcow2', image]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
  assert.match(check.stdout, /No errors were found on the image/);
});
