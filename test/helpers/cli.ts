import { PassThrough, Readable } from 'node:stream';
import { main } from '../../src/cli/main.js';
import type { RunResult } from './oracles.js';

/** Runs `vdisk ARGS…` in this process with captured streams (no process start-up per call). */
export async function vdisk(args: readonly string[], input = ''): Promise<RunResult> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  stdout.on('data', (d: Buffer) => out.push(d));
  stderr.on('data', (d: Buffer) => err.push(d));
  const code = await main([...args], { stdin: Readable.from([input]), stdout, stderr });
  return { code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
}
