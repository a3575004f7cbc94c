import { spawn } from 'node:child_process';

const REPO = new URL('../../../', import.meta.url).pathname;

export interface CliExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Milliseconds from start to exit, for diagnostics. */
  ms: number;
}

/**
 * Runs `vdisk ARGS` from source as its own process and waits for that process to end: what a
 * test of "the process exits" needs, where the in-process vdisk() helper cannot tell.
 */
export function vdiskProcess(args: readonly string[]): Promise<CliExit> {
  const started = Date.now();
  const child = spawn(process.execPath, ['--import', 'tsx', `${REPO}src/cli/dev.ts`, ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: Date.now() - started })));
}
