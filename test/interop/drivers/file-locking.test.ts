import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { BlockError } from '../../../src/core/errors.js';
import { open } from '../../../src/registry/index.js';
import { needNative } from '../../helpers/native.js';
import { needTools, run } from '../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../helpers/tmp.js';

/** Starts interactive qemu-io on the image and resolves once it has opened it (its prompt). */
async function holdWithQemuIo(image: string, format: string, readOnly: boolean) {
  const child = spawn('qemu-io', [...(readOnly ? ['-r'] : []), '-f', format, image], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  // qemu-io answers a command only after the open; the answer proves the lock is held.
  child.stdin.write('length\n');
  while (!/\d+ (KiB|MiB|bytes)/.test(out)) {
    if (child.exitCode !== null) throw new Error(`qemu-io exited early: ${out}`);
    await once(child.stdout, 'data');
  }
  return {
    async release() {
      child.stdin.end('quit\n');
      if (child.exitCode === null) await once(child, 'exit');
    },
  };
}

describe('image locks are QEMU-compatible', () => {
  let tmp: TmpDir;
  let image: string;
  before(async () => {
    tmp = await makeTmpDir();
    image = tmp.path('locked.raw');
    await writeFile(image, Buffer.alloc(1024 * 1024));
  });
  after(async () => tmp.cleanup());

  it('raw writers share the file as qemu-io writers do', async (t) => {
    if (!needTools(t, 'qemu-io', 'qemu-img') || !needNative(t)) return;
    const node = await open(image, { format: 'raw' });
    try {
      assert.equal((await run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', image])).code, 0);
      assert.equal((await run('qemu-img', ['info', '-f', 'raw', image])).code, 0);
    } finally {
      await node.close();
    }
  });

  it('an exclusive vdisk writer keeps QEMU writers out, not readers', async (t) => {
    if (!needTools(t, 'qemu-io', 'qemu-img') || !needNative(t)) return;
    const node = await open({ driver: 'raw', file: { driver: 'file', filename: image, exclusive: true } });
    try {
      const w = await run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', image]);
      assert.notEqual(w.code, 0);
      assert.match(w.stderr, /Failed to get "write" lock/);
      // A raw reader wants no write permission, so QEMU lets it in, as it does beside qemu-nbd.
      assert.equal((await run('qemu-img', ['info', '-f', 'raw', image])).code, 0);
      assert.equal((await run('qemu-io', ['-U', '-r', '-f', 'raw', '-c', 'read 0 512', image])).code, 0);
    } finally {
      await node.close();
    }
    assert.equal((await run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', image])).code, 0, 'free again after close');
  });

  it('a QEMU format node (qemu-nbd on qcow2) keeps vdisk writers out with E_LOCKED, not readers', async (t) => {
    if (!needTools(t, 'qemu-img', 'qemu-io') || !needNative(t)) return;
    const qcow2 = tmp.path('held.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', qcow2, '1M']);
    const holder = await holdWithQemuIo(qcow2, 'qcow2', false);
    try {
      await assert.rejects(open(qcow2, { format: 'raw' }),
        (e: unknown) => e instanceof BlockError && e.code === 'E_LOCKED' && /Failed to get "write" lock/.test(e.message));
      const ro = await open(qcow2, { format: 'raw', readOnly: true });
      await ro.close();
      // An exclusive reader cannot even start: the holder keeps write permission we refuse to share.
      await assert.rejects(open({ driver: 'raw', 'read-only': true, file: { driver: 'file', filename: qcow2, exclusive: true } }),
        (e: unknown) => e instanceof BlockError && e.code === 'E_LOCKED' && /Failed to get shared "write" lock/.test(e.message));
      // locking=off is the escape hatch qemu's -U is.
      const forced = await open(qcow2, { format: 'raw', locking: 'off' });
      await forced.close();
    } finally {
      await holder.release();
    }
    const rw = await open(qcow2, { format: 'raw' });
    await rw.close();
  });
});
