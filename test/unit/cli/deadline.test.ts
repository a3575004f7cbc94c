import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockError } from '../../../src/core/errors.js';
import { withDeadline } from '../../../src/cli/deadline.js';
import { makeTmpDir } from '../../helpers/tmp.js';
import { vdiskProcess } from './cli-process.js';

const expired = () => new BlockError('ETIMEDOUT', 'too slow');

it('work done in time is the answer; 0 seconds is no limit', async () => {
  assert.equal(await withDeadline(5, Promise.resolve(7), expired), 7);
  assert.equal(await withDeadline(0, sleep(30).then(() => 8), expired), 8);
  await assert.rejects(withDeadline(5, Promise.reject(new Error('own failure')), expired), /own failure/);
});

it('late work fails with the deadline\'s error, and what it brings later is released', async () => {
  let release!: (v: number) => void;
  const work = new Promise<number>((resolve) => (release = resolve));
  const released: number[] = [];
  await assert.rejects(withDeadline(0.05, work, expired, (late) => released.push(late)), (e: unknown) => e instanceof BlockError && e.code === 'ETIMEDOUT');
  release(9);
  await work;
  await sleep(0);
  assert.deepEqual(released, [9]);
});

it('a command whose open(2) is stuck in the kernel fails with ETIMEDOUT, and its process ends', async (t) => {
  const tmp = await makeTmpDir('vdisk-stuck-open-');
  try {
    // A FIFO without a writer: open(2) for reading sleeps until one comes, as on a dead NFS mount.
    const fifo = tmp.path('fifo');
    execFileSync('mkfifo', [fifo]);
    const r = await vdiskProcess(['info', '--timeout', '1', fifo]);
    t.diagnostic(`exited after ${r.ms} ms: code ${r.code}, signal ${r.signal}`);
    // The stuck thread keeps Node from exiting on its own: the process ends itself by SIGTERM.
    assert.deepEqual([r.code, r.signal], [null, 'SIGTERM']);
    assert.equal(r.stderr, `vdisk info: Could not open '${fifo}': no answer within 1 s (ETIMEDOUT)\n`);
    assert.equal(r.stdout, '');
  } finally {
    await tmp.cleanup();
  }
});
