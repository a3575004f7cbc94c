/**
 * qcow2 image locking against the real QEMU tools, in both directions: while `vdisk io` has a
 * qcow2 open for writing (as a separate process), `qemu-img info` is refused with QEMU's own
 * lock error; while `qemu-nbd` serves a qcow2, `vdisk io` refuses to write it with one line
 * on stderr, and leaves the file alone. The locks are QEMU's (OFD locks on bytes 100+ and
 * 200+ of the image file), so the tests wait for them in /proc/locks rather than sleeping.
 *
 * Children are polled, never raced against a timer; every poll is bounded by a count and fails
 * with what the child printed. Children are always killed and reaped, even when a test fails.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { access, readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it, type TestContext } from 'node:test';
import { vdisk } from '../../../helpers/cli.js';
import { needNative } from '../../../helpers/native.js';
import { needTools, run, runOk } from '../../../helpers/oracles.js';
import { makeTmpDir, type TmpDir } from '../../../helpers/tmp.js';

/** The repository root (this file is test/interop/drivers/qcow2/locks.test.ts). */
const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));

/** How often and how many times to poll for a child's progress (bounded: 20 s in all). */
const POLL_MS = 25;
const POLLS = 800;

/** A child process whose output is kept, and that can be stopped (and reaped) at any time. */
interface Child {
  readonly proc: ChildProcess;
  output(): string;
  exited(): boolean;
  /** SIGTERM if still running, then waits for its exit. Safe to call twice. */
  stop(): Promise<void>;
}

function start(cmd: string, args: readonly string[], cwd?: string): Child {
  const proc = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  let done = false;
  // 'exit', or 'error' alone when the spawn itself failed (ENOENT): either way it is over.
  const ended = new Promise<void>((resolve) => {
    const end = () => {
      done = true;
      resolve();
    };
    proc.once('exit', end);
    proc.once('error', (e) => {
      out += `\n${String(e)}`;
      end();
    });
  });
  return {
    proc,
    output: () => out,
    exited: () => done,
    async stop() {
      if (!done) proc.kill('SIGTERM');
      await ended;
    },
  };
}

/** The lock lines /proc/locks shows for the file's inode (any holder). */
async function locksOn(file: string): Promise<string[]> {
  const { ino } = await stat(file);
  const text = await readFile('/proc/locks', 'utf8');
  // "1: OFDLCK ADVISORY  READ -1 fe:00:2148256 100 101": MAJOR:MINOR:INODE, then the byte range.
  return text.split('\n').filter((l) => new RegExp(`\\s[0-9a-f]+:[0-9a-f]+:${ino}\\s`).test(l));
}

/** Polls `ready` until it holds; fails (with the child's output) if the child exits or the count runs out. */
async function waitFor(child: Child, what: string, ready: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < POLLS; i++) {
    if (await ready()) return;
    if (child.exited()) {
      throw new Error(`${what}: the child exited first (status ${child.proc.exitCode}, signal ${child.proc.signalCode}): ${child.output().trim()}`);
    }
    await sleep(POLL_MS);
  }
  throw new Error(`${what}: not after ${POLLS} polls ${POLL_MS} ms apart; the child printed: ${child.output().trim()}`);
}

const exists = (file: string) => access(file).then(() => true, () => false);

let tmp: TmpDir;
before(async () => {
  tmp = await makeTmpDir('vdisk-qcow2-locks-');
});
after(() => tmp.cleanup());

/** A qcow2 made by qemu-img, with some data written by qemu-io. */
async function image(name: string): Promise<string> {
  const file = tmp.path(name);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', file, '4M']);
  await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 192k', file]);
  return file;
}

/** The tools, the addon (vdisk's locks are its OFD locks) and Linux's /proc/locks to watch them in. */
async function need(t: TestContext, ...tools: string[]): Promise<boolean> {
  if (!needTools(t, ...tools) || !needNative(t)) return false;
  if (await exists('/proc/locks')) return true;
  t.skip('needs /proc/locks (Linux)');
  return false;
}

describe('qcow2 image locks between vdisk and QEMU', () => {
  it('while vdisk io has a qcow2 open for writing, qemu-img info fails with QEMU\'s lock error', async (t) => {
    if (!(await need(t, 'qemu-img', 'qemu-io'))) return;
    const img = await image('held-by-vdisk.qcow2');
    // The CLI from source in a process of its own: locks are per open file description, and
    // QEMU must see another process holding them. `sleep 5000` keeps the image open; the test
    // kills it as soon as it is done.
    const child = start(process.execPath, ['--import', 'tsx', 'src/cli/dev.ts', 'io', '-f', 'qcow2', '-c', 'sleep 5000', img], ROOT);
    t.after(() => child.stop());
    try {
      await waitFor(child, `vdisk io locking ${img}`, async () => (await locksOn(img)).length > 0);
      const info = await run('qemu-img', ['info', img]);
      assert.notEqual(info.code, 0, `qemu-img info succeeded beside a vdisk writer:\n${info.stdout}`);
      assert.match(info.stderr, /Failed to get shared "write" lock/);
      // The refusal is the lock and nothing else: with -U (force share) QEMU opens it.
      assert.equal((await run('qemu-img', ['info', '-U', img])).code, 0, 'qemu-img info -U');
    } finally {
      await child.stop();
    }
    assert.deepEqual(await locksOn(img), [], 'no locks left once vdisk io has gone');
    assert.equal((await run('qemu-img', ['info', img])).code, 0, 'qemu-img info after vdisk io exited');
  });

  it('while qemu-nbd serves a qcow2, vdisk io refuses to write it with one line saying it is locked', async (t) => {
    if (!(await need(t, 'qemu-img', 'qemu-io', 'qemu-nbd'))) return;
    const img = await image('served-by-qemu-nbd.qcow2');
    const sock = tmp.path('nbd.sock');
    const nbd = start('qemu-nbd', ['-k', sock, '-f', 'qcow2', img]);
    t.after(() => nbd.stop());
    const bytes = await readFile(img);
    try {
      // qemu-nbd opens (and locks) the image before it listens; wait for both.
      await waitFor(nbd, `qemu-nbd serving ${img}`, async () => (await exists(sock)) && (await locksOn(img)).length > 0);
      const r = await vdisk(['io', '-f', 'qcow2', '-c', 'write 0 4k', img]);
      assert.notEqual(r.code, 0, `vdisk io wrote beside qemu-nbd:\n${r.stdout}${r.stderr}`);
      const lines = r.stderr.split('\n').filter((l) => l !== '');
      assert.equal(lines.length, 1, `one line on stderr: ${JSON.stringify(r.stderr)}`);
      assert.match(lines[0]!, /lock/);
      assert.equal(r.stdout, '', 'nothing on stdout');
      // qemu-io itself refuses the same way, with the same status.
      const q = await run('qemu-io', ['-f', 'qcow2', '-c', 'write 0 4k', img]);
      assert.equal(r.code, q.code, `exit status: vdisk ${r.code}, qemu-io ${q.code} (${q.stderr.trim()})`);
    } finally {
      await nbd.stop();
    }
    assert.ok((await readFile(img)).equals(bytes), 'the image file is unchanged');
  });

  it('once qemu-nbd has gone, vdisk io writes the same image', async (t) => {
    if (!(await need(t, 'qemu-img', 'qemu-io', 'qemu-nbd'))) return;
    const img = await image('after-qemu-nbd.qcow2');
    const sock = tmp.path('nbd-after.sock');
    const nbd = start('qemu-nbd', ['-k', sock, '-f', 'qcow2', img]);
    t.after(() => nbd.stop());
    try {
      await waitFor(nbd, `qemu-nbd serving ${img}`, async () => (await exists(sock)) && (await locksOn(img)).length > 0);
    } finally {
      await nbd.stop();
    }
    assert.deepEqual(await locksOn(img), [], 'qemu-nbd released its locks');
    const r = await vdisk(['io', '-f', 'qcow2', '-c', 'write -P 0xa5 0 4k', img]);
    assert.equal(r.code, 0, `vdisk io after qemu-nbd exited: ${r.stderr.trim()}`);
    assert.equal((await run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0xa5 0 4k', img])).code, 0, 'qemu-io reads what vdisk wrote');
    assert.equal((await run('qemu-img', ['check', img])).code, 0, 'qemu-img check');
  });
});
