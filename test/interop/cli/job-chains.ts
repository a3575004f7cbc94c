/**
 * Shared by the commit and stream interop tests: backing chains built with qemu-img and qemu-io
 * only, copied so that qemu-img and vdisk each work on their own, and a vdisk job interrupted
 * with Ctrl-C once it is moving.
 */
import { spawn } from 'node:child_process';
import { copyFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runOk } from '../../helpers/oracles.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));

export interface ChainOptions {
  baseFormat?: string;
  topCompat?: string;
}

/**
 * base ← mid.qcow2 ← top.qcow2, 8 MiB each, in `dir`. The base holds data at 0, 4M and 6M;
 * mid holds data at 1M, an explicit zero range over the base's data at 4M and all-zero data at
 * 5M; the top holds an explicit zero cluster over the base's data at 0, data at 2M and 7M, and
 * all-zero data over the base's data at 6M.
 */
export async function buildChain(dir: string, opts: ChainOptions = {}): Promise<void> {
  const fmt = opts.baseFormat ?? 'qcow2';
  const at = (name: string) => path.join(dir, name);
  await runOk('qemu-img', ['create', '-q', '-f', fmt, at(`base.${fmt}`), '8M']);
  await runOk('qemu-io', ['-f', fmt, '-c', 'write -P 1 0 1M', '-c', 'write -P 2 4M 1M', '-c', 'write -P 9 6M 512k', at(`base.${fmt}`)]);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', `base.${fmt}`, '-F', fmt, at('mid.qcow2'), '8M']);
  await runOk('qemu-io', ['-c', 'write -P 3 1M 1M', '-c', 'write -z 4M 512k', '-c', 'write -P 0 5M 256k', at('mid.qcow2')]);
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', ...(opts.topCompat ? ['-o', `compat=${opts.topCompat}`] : []),
    '-b', 'mid.qcow2', '-F', 'qcow2', at('top.qcow2'), '8M']);
  await runOk('qemu-io', ['-c', 'write -z 0 64k', '-c', 'write -P 4 2M 1M', '-c', 'write -P 0 6M 256k', '-c', 'write -P 5 7M 64k', at('top.qcow2')]);
}

export interface Triplet {
  /** The chain as built, never changed. */
  orig: string;
  /** A copy for qemu-img to work on, and one for vdisk. */
  qemu: string;
  ours: string;
}

/** Three copies of one chain under `root`, each a directory of its own so relative links resolve inside it. */
export async function triplets(root: string, opts: ChainOptions = {}): Promise<Triplet> {
  const dirs = { orig: `${root}/orig`, qemu: `${root}/qemu`, ours: `${root}/vdisk` };
  for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });
  await buildChain(dirs.orig, opts);
  for (const f of [`base.${opts.baseFormat ?? 'qcow2'}`, 'mid.qcow2', 'top.qcow2']) {
    await copyFile(path.join(dirs.orig, f), path.join(dirs.qemu, f));
    await copyFile(path.join(dirs.orig, f), path.join(dirs.ours, f));
  }
  return dirs;
}

export interface Interrupted {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `vdisk ARGS` (with -p among them) as a process of its own and sends it SIGINT as soon as
 * its progress shows a figure above zero, as a user pressing Ctrl-C would.
 */
export async function interruptWhenMoving(args: readonly string[]): Promise<Interrupted> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/dev.ts', ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  await new Promise<void>((resolve) => {
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (/\((?!0\.00)\d+\.\d\d\/100%\)/.test(stdout)) resolve();
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    void exited.then(() => resolve());
  });
  child.kill('SIGINT');
  return { code: await exited, stdout, stderr };
}
