import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { needTools } from '../../helpers/oracles.js';
import { makeTmpDir } from '../../helpers/tmp.js';
import { vdiskProcess } from '../../unit/cli/cli-process.js';

/*
 * A local file whose reads never return, as on a dead NFS or FUSE mount: nbdfuse mounts an nbdkit
 * export through FUSE, and nbdkit's delay filter holds every read for an hour. Only root can
 * mount FUSE here without fusermount; elsewhere the test skips.
 */
async function stuckMount(t: TestContext): Promise<{ file: string; scratch: string } | undefined> {
  if (process.getuid?.() !== 0 || !existsSync('/dev/fuse')) {
    t.skip('needs root and /dev/fuse to mount a FUSE file system');
    return undefined;
  }
  if (!needTools(t, 'nbdfuse', 'nbdkit')) return undefined;
  const tmp = await makeTmpDir('vdisk-stuck-mount-');
  const dir = tmp.path('mnt');
  execFileSync('mkdir', [dir]);
  const fuse = spawn('nbdfuse', [dir, '--command', 'nbdkit', '-s', '--filter=delay', 'memory', '64M', 'rdelay=3600'], { stdio: 'ignore' });
  t.after(async () => {
    // Stopping the server fails the reads it still holds (nothing stays blocked on the mount),
    // and then nbdfuse ends; nbdfuse alone waits for those reads first.
    try {
      execFileSync('pkill', ['-TERM', '-P', String(fuse.pid)]);
    } catch {
      // nbdkit is gone already.
    }
    fuse.kill('SIGTERM');
    await new Promise((resolve) => (fuse.exitCode !== null ? resolve(undefined) : fuse.once('exit', resolve)));
    try {
      execFileSync('umount', ['-l', dir], { stdio: 'ignore' });
    } catch {
      // nbdfuse unmounted it on its way out.
    }
    await tmp.cleanup();
  });
  // The file appears once the mount is up.
  while (!existsSync(`${dir}/nbd`)) {
    if (fuse.exitCode !== null) throw new Error(`nbdfuse exited with status ${fuse.exitCode}`);
    await sleep(50);
  }
  return { file: `${dir}/nbd`, scratch: tmp.path('out.raw') };
}

test('a read that never returns fails with ETIMEDOUT under --timeout, and the process ends', async (t) => {
  const mount = await stuckMount(t);
  if (!mount) return;
  const { file, scratch } = mount;
  // -f raw: opening reads nothing, so it is the copy's first read that waits for ever.
  const r = await vdiskProcess(['dd', '--timeout', '1', '-f', 'raw', '-O', 'raw', `if=${file}`, `of=${scratch}`, 'bs=64k', 'count=4']);
  t.diagnostic(`exited after ${r.ms} ms`);
  assert.deepEqual([r.code, r.signal, r.stdout], [1, null, '']);
  assert.equal(r.stderr, `vdisk dd: error while reading from input image file: Could not read '${file}': no answer within 1 s (ETIMEDOUT)\n`);
});
