import { mkdir, statfs } from 'node:fs/promises';
import type { TestContext } from 'node:test';
import { haveTool, run } from './oracles.js';
import { makeTmpDir } from './tmp.js';

/** A file system made in a sparse file and mounted on a loop device (root only). */
export interface LoopFs {
  /** The mount point. */
  readonly dir: string;
  /** Bytes available, as df shows them (statfs), for "this used no space" checks. */
  free(): Promise<number>;
}

/**
 * Makes a file system of `size` bytes with `mkfs ARGS` in a sparse file and mounts it with
 * `mount -o loop` (whose loop device goes away at umount). Skips the test where mkfs is missing
 * or mounting is not permitted (no root, a container without loop devices). The mount, the loop
 * device and the files are removed when the test ends, whether it passed or not.
 */
export async function mountLoopFs(t: TestContext, mkfs: string, args: readonly string[], size: number): Promise<LoopFs | undefined> {
  if (!haveTool(mkfs)) {
    t.skip(`needs ${mkfs}`);
    return undefined;
  }
  const tmp = await makeTmpDir('vdisk-loopfs-');
  const image = tmp.path('fs.img');
  const dir = tmp.path('mnt');
  let mounted = false;
  t.after(async () => {
    if (mounted) {
      const r = await run('umount', [dir]);
      // Something still holds it (a failed test's open file): detach lazily rather than leak it.
      if (r.code !== 0) await run('umount', ['-l', dir]);
    }
    // A loop device that outlived its mount (mount killed half-way) is detached too.
    const held = await run('losetup', ['-j', image]).catch(() => undefined);
    for (const line of held?.stdout.split('\n') ?? []) {
      const dev = line.split(':')[0];
      if (dev) await run('losetup', ['-d', dev]);
    }
    await tmp.cleanup();
  });
  await mkdir(dir);
  await run('truncate', ['-s', String(size), image]);
  const made = await run(mkfs, [...args, image]);
  if (made.code !== 0) {
    t.skip(`${mkfs} ${args.join(' ')} failed: ${made.stderr.trim()}`);
    return undefined;
  }
  const m = await run('mount', ['-o', 'loop', image, dir]);
  if (m.code !== 0) {
    t.skip(`cannot mount a loop file system here: ${m.stderr.trim()}`);
    return undefined;
  }
  mounted = true;
  return {
    dir,
    async free() {
      const st = await statfs(dir);
      return st.bavail * st.bsize;
    },
  };
}

/**
 * Bytes of `file` resident in the page cache, per util-linux fincore (skips without it).
 * fincore counts pages, so this is a multiple of the page size.
 */
export async function residentBytes(file: string): Promise<number> {
  const r = await run('fincore', ['--bytes', '--noheadings', '--raw', '--output', 'RES', file]);
  if (r.code !== 0) throw new Error(`fincore ${file} failed: ${r.stderr.trim()}`);
  return Number(r.stdout.trim());
}
