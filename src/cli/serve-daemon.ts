import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { BlockError } from '../core/errors.js';
import { UsageError } from './errors.js';

/*
 * How `vdisk serve` becomes a daemon the way qemu-nbd does: --fork (the parent returns once the
 * server listens), --pid-file, and systemd socket activation (LISTEN_PID/LISTEN_FDS), which is
 * also how libnbd runs a captive server (`nbdinfo -- [ vdisk serve … ]`).
 */

/** Set in the environment of the server process that --fork starts. */
const FORKED_ENV = 'VDISK_SERVE_FORKED';

type ForkMessage = { ready: true } | { error: string };

/** The listening sockets systemd passed (fds 3…), or undefined when not socket-activated. */
export function activationFds(env: NodeJS.ProcessEnv = process.env): number[] | undefined {
  const pid = env.LISTEN_PID;
  const count = env.LISTEN_FDS;
  if (pid === undefined || count === undefined || Number(pid) !== process.pid) return undefined;
  const n = Number(count);
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`Unexpected LISTEN_FDS value '${count}'`);
  // Not for our children: they are not the process the fds were meant for.
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  return Array.from({ length: n }, (_, i) => 3 + i);
}

/** True in the process that --fork started. */
export function isForkedServer(): boolean {
  return process.env[FORKED_ENV] === '1' && typeof process.send === 'function';
}

/** Tells the parent of a forked server that it listens (or why it could not). */
export function reportToParent(message: ForkMessage): void {
  if (!isForkedServer()) return;
  process.send!(message);
  process.disconnect?.();
}

/** The CLI entry to start again: dist/cli/dev.js when built, src/cli/dev.ts under tsx. */
function cliEntry(): string {
  const js = fileURLToPath(new URL('./dev.js', import.meta.url));
  return existsSync(js) ? js : fileURLToPath(new URL('./dev.ts', import.meta.url));
}

/**
 * --fork: runs the same command line again in a detached process and returns once it listens,
 * with its error message if it fails to start. Like qemu-nbd's child, the server keeps none of
 * the caller's stdio, so a caller reading our output is not held open by it.
 */
export async function forkServer(argv: readonly string[]): Promise<void> {
  const nodeFlags = process.execArgv.filter((a) => !a.startsWith('--test'));
  const child = spawn(process.execPath, [...nodeFlags, cliEntry(), 'serve', ...argv.filter((a) => a !== '--fork')], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    env: { ...process.env, [FORKED_ENV]: '1' },
  });
  const message = await new Promise<ForkMessage>((resolve) => {
    child.once('message', (m) => resolve(m as ForkMessage));
    child.once('error', (err) => resolve({ error: `Cannot start the server: ${err.message}` }));
    child.once('exit', (code) => resolve({ error: `The server exited with status ${code} before it was ready` }));
  });
  child.unref();
  if (child.connected) child.disconnect();
  if ('error' in message) throw new UsageError(message.error);
}

export async function writePidFile(file: string): Promise<void> {
  try {
    await writeFile(file, `${process.pid}\n`);
  } catch (err) {
    throw new BlockError('EIO', `Cannot write pid file '${file}': ${(err as Error).message}`, { op: 'serve', path: file }, { cause: err });
  }
}
