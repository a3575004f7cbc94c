import { mkdtemp, rm } from 'node:fs/promises';
import { open as openFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/** A fresh directory under os.tmpdir(); `cleanup()` removes it and everything in it. */
export interface TmpDir {
  readonly dir: string;
  /** A path inside the directory. */
  path(name: string): string;
  cleanup(): Promise<void>;
}

export async function makeTmpDir(prefix = 'vdisk-test-'): Promise<TmpDir> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return {
    dir,
    path: (name) => path.join(dir, name),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

/** A run of a sparse test file: bytes written (data, or explicit zeros), or a reserved range. */
export type SparseRun =
  | { offset: number; data: Uint8Array }
  /** fallocate ZERO_RANGE: allocated blocks that read as zeros and show as holes to SEEK_DATA. */
  | { offset: number; length: number; reserve: true };

/**
 * Creates `file` with `size` bytes, a hole everywhere except the runs. Reserved runs need a
 * `fallocate(fd, mode, offset, length)` (the native addon's); without one they are skipped
 * and the function returns false.
 */
export async function makeSparseFile(file: string, size: number, runs: readonly SparseRun[],
  fallocate?: (fd: number, mode: number, offset: number, length: number) => Promise<void>): Promise<boolean> {
  const fh = await openFile(file, 'w');
  let complete = true;
  try {
    await fh.truncate(size);
    for (const run of runs) {
      if ('data' in run) await fh.write(run.data, 0, run.data.byteLength, run.offset);
      else if (fallocate) await fallocate(fh.fd, 0x10 /* FALLOC_FL_ZERO_RANGE */, run.offset, run.length);
      else complete = false;
    }
  } finally {
    await fh.close();
  }
  return complete;
}
