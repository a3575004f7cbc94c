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
async function stuckMount(t: TestContext): Promise<{ file: string; scratch: string; dir: string; stop: () => void } | undefined> {
  if (process.getuid?.() !== 0 || !existsSync('/dev/fuse')) {
    t.skip('needs root and /dev/fuse to mount a FUSE file system');
    return undefined;
  }
  if (!needTools(t, 'nbdfuse', 'nbdkit')) return undefined;
  const tmp = await makeTmpDir('vdisk-stuck-mount-');
  const dir = tmp.path('mnt');
  execFileSync('mkdir', [dir]);
  const fuse = spawn('nbdfuse', [dir, '--command', 'nbdkit', '-s', '--filter=delay', 'memory', '64M', 'rdelay=3600'], { stdio: 'ignore' });
  // Stopping the server fails the reads it still holds (nothing stays blocked on the mount),
  // and then nbdfuse ends; nbdfuse alone waits for those reads first.
  const stop = () => {
    try {
      execFileSync('pkill', ['-TERM', '-P', String(fuse.pid)]);
    } catch {
      // nbdkit is gone already.
    }
  };
  t.after(async () => {
    stop();
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
  return { file: `${dir}/nbd`, scratch: tmp.path('out.raw'), dir: tmp.path('.'), stop };
}

/**
 * Runs `vdisk ARGS` as a process and returns its first line on stderr, then how it exited once
 * `unstick` let the storage answer. The line comes while requests are still held: the process
 * can end only when the kernel lets its threads go (some wait uninterruptibly, on page locks or
 * a file lock), after the mount answers.
 */
async function failsWhileStuck(args: string[], unstick: () => void): Promise<{ line: string; exit: [number | null, NodeJS.Signals | null] }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/dev.ts', ...args], {
    cwd: new URL('../../../', import.meta.url).pathname,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  const line = await new Promise<string>((resolve) => {
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes('\n')) resolve(stderr);
    });
    child.once('close', () => resolve(stderr));
  });
  unstick();
  // Polled, and on a timer that holds the event loop: the child's exit comes only when the
  // kernel lets its last thread go, and until then nothing else may be left to keep this
  // process waiting for it.
  const exit = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
    const poll = setInterval(() => {
      if (child.exitCode === null && child.signalCode === null) return;
      clearInterval(poll);
      resolve([child.exitCode, child.signalCode]);
    }, 50);
  });
  return { line, exit };
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

test('a SEEK_DATA that never returns fails with ETIMEDOUT under --timeout', async (t) => {
  const mount = await stuckMount(t);
  if (!mount) return;
  // lseek(SEEK_DATA) on an ext4 or XFS file waits for the file's lock, and a buffered write
  // holds that lock while it faults in its source buffer: with the buffer mapped from the stuck
  // mount, the write (and so every SEEK_DATA on the file) waits as long as the mount does, as
  // on a file system whose server has gone.
  const image = `${mount.dir}/held.raw`;
  execFileSync('truncate', ['-s', '64M', image]);
  const holder = spawn('python3', ['-c', [
    'import mmap, os, sys',
    `src = os.open(${JSON.stringify(mount.file)}, os.O_RDONLY)`,
    'm = mmap.mmap(src, 1 << 20, prot=mmap.PROT_READ)',
    `dst = os.open(${JSON.stringify(image)}, os.O_WRONLY)`,
    'print("writing", flush=True)',
    'os.pwrite(dst, memoryview(m), 0)',
  ].join('\n')], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => holder.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    holder.stdout!.once('data', () => resolve());
    holder.once('exit', (code) => reject(new Error(`the lock holder exited with status ${code}`)));
  });
  await sleep(300); // into the write, holding the lock, waiting for the mount

  const { line, exit } = await failsWhileStuck(['map', '--timeout', '1', '-f', 'raw', '--output=json', image], mount.stop);
  assert.equal(line, `vdisk map: Could not find the data in '${image}': no answer within 1 s (ETIMEDOUT)\n`);
  assert.deepEqual(exit, [1, null]);
});

