import { constants as fsc, promises as fsp } from 'node:fs';
import { BlockError, fromSystemError } from '../../../core/errors.js';
import { native } from '../../../native/index.js';
import { applyLocks, permissionsFor } from './locking.js';

export type FilePreallocation = 'off' | 'falloc' | 'full';

/** How much zero data `full` preallocation writes per call. */
const FULL_CHUNK = 4 * 1024 * 1024;
/** QEMU allocates the first block of a new file so alignment probing works on it. */
const FIRST_BLOCK = 4096;

/**
 * Creates (or truncates) a file of `size` bytes, as QEMU's file-posix does: `off` leaves it
 * sparse but for the first block, `falloc` reserves every block, `full` writes zeros.
 */
/** A file opened for creation with QEMU's locks taken; `isNew` says whether it existed before. */
export interface CreatedFile {
  path: string;
  fh: fsp.FileHandle;
  isNew: boolean;
}

/**
 * Opens (creating) a file and takes QEMU's locks on it, without changing its contents: never
 * truncate an image that a process (vdisk or QEMU) holds with writers locked out. A file this
 * call created is removed again when it fails.
 */
export async function openForCreate(path: string): Promise<CreatedFile> {
  const ctx = { op: 'create', path };
  let isNew = false;
  try {
    await fsp.stat(path);
  } catch (err) {
    isNew = (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, fsc.O_RDWR | fsc.O_CREAT, 0o644);
  } catch (err) {
    throw fromSystemError(err, ctx);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new BlockError('EINVAL', `Could not create '${path}': not a regular file`, ctx);
    if (native) {
      const { perm, shared } = permissionsFor(true, true);
      await applyLocks(native, fh.fd, path, perm, shared);
    }
  } catch (err) {
    await fh.close();
    if (isNew) await fsp.rm(path, { force: true });
    throw err instanceof BlockError ? err : fromSystemError(err, ctx);
  }
  return { path, fh, isNew };
}

export async function createFile(path: string, size: number, preallocation: FilePreallocation = 'off'): Promise<void> {
  const ctx = { op: 'create', path };
  if (!Number.isSafeInteger(size) || size < 0) throw new BlockError('EINVAL', `Invalid image size ${size}`, ctx);
  const { fh } = await openForCreate(path);
  try {
    await fh.truncate(0);
    if (preallocation === 'falloc' && size > 0) {
      if (!native) throw new BlockError('ENOTSUP', 'preallocation=falloc needs the native addon, which is not loaded', ctx);
      await native.fallocate(fh.fd, 0, 0, size);
    } else if (preallocation === 'full') {
      const zeros = new Uint8Array(Math.min(FULL_CHUNK, size));
      for (let pos = 0; pos < size; pos += zeros.byteLength) {
        const n = Math.min(zeros.byteLength, size - pos);
        await fh.write(zeros, 0, n, pos);
      }
    }
    await fh.truncate(size);
    if (preallocation === 'off' && size > 0) await fh.write(new Uint8Array(Math.min(FIRST_BLOCK, size)), 0, Math.min(FIRST_BLOCK, size), 0);
    // As QEMU's raw create: only a full preallocation is synced (a sync here cost a convert to
    // a new raw file on XFS 90 ms, most of its time).
    if (preallocation === 'full') await fh.datasync();
  } catch (err) {
    throw err instanceof BlockError ? err : fromSystemError(err, ctx);
  } finally {
    await fh.close();
  }
}
