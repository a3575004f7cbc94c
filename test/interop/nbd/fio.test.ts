import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { fioVerify } from '../../helpers/fio.js';
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

it('randrw with verify=crc32c from two jobs: no verify errors, a clean image', async (t) => {
  if (!needTools(t, 'fio', 'qemu-img')) return;
  const image = tmp.path('fio.qcow2');
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
  const s = await serveOnSocket(tmp.dir, ['-e', '0', '-f', 'qcow2', image]);
  try {
    await fioVerify(s.uri, tmp.dir, 'randrw', 16);
  } finally {
    const exit = await s.proc.stop();
    assert.equal(exit.code, 0, exit.stderr);
  }
  const check = await run('qemu-img', ['check', '-f', 'qcow2', image]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
  assert.match(check.stdout, /No errors were found on the image/);
});
