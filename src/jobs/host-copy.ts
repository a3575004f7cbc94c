import type { BlockNode } from '../core/block-node.js';
import { FileNode } from '../drivers/protocol/file/file-node.js';
import { native } from '../native/index.js';
import type { CopyRequest } from './copy-plan.js';
import { rawFile } from './clone-plan.js';
import { firstBlock, withDataRuns, type SparseRun } from './sparse-runs.js';

/** Errors that mean these two files cannot be copied with copy_file_range: copy through memory instead. */
const NOT_THIS_WAY = new Set(['EXDEV', 'EINVAL', 'EOPNOTSUPP', 'ENOTSUP', 'ENOSYS', 'EBADF']);

/**
 * Data requests copied in the kernel (copy_file_range) where both ends are plain files: the
 * request's bytes lie in one piece in a host file under the source (a raw image's file, a qcow2
 * image's uncompressed clusters) and the target is a raw image straight on a file. The bytes are
 * not copied through the process at all, and zero detection (-S) scans them through a read-only
 * mapping of the source, which copies nothing either: one copy in the kernel instead of two
 * through a buffer, and none of the per-request work of the source and target drivers.
 *
 * Both files must use the page cache (not cache=none: copy_file_range is a buffered copy).
 */
export class HostCopy {
  /** Source host files by filename (undefined: no usable file has that name). */
  private readonly files = new Map<string, FileNode | undefined>();
  private disabled = false;

  private constructor(private readonly target: FileNode) {}

  /** The host copy for a copy between these nodes, or undefined where it cannot be used. */
  static async create(target: BlockNode): Promise<HostCopy | undefined> {
    if (!native?.copyFileRange || !native.fileZeroRuns || target.readOnly || target.detectZeroes !== 'off') return undefined;
    const file = await rawFile(target);
    if (!file || file.uncachedBy !== undefined) return undefined;
    return new HostCopy(file);
  }

  /** The source file and offset of a data request, or undefined: it goes through memory. */
  route(req: CopyRequest): { file: FileNode; offset: number } | undefined {
    if (this.disabled || !req.host) return undefined;
    let file = this.files.get(req.host.file);
    if (!this.files.has(req.host.file)) {
      file = findFile(req.source, req.host.file);
      this.files.set(req.host.file, file);
    }
    return file && file.fd >= 0 ? { file, offset: req.host.offset } : undefined;
  }

  /**
   * The request's runs to write and to leave sparse, as sparseRuns finds them in a buffer; one
   * data run with -S 0. Undefined when the source cannot be scanned this way (the file is
   * shorter than the request, or shrank meanwhile): the request then goes through memory, whose
   * read reports what is wrong.
   */
  async scan(req: CopyRequest, from: { file: FileNode; offset: number }, granule: number, minZero: number): Promise<SparseRun[] | undefined> {
    if (minZero === 0) return [{ offset: req.offset, length: req.length, zero: false }];
    try {
      const zeros = await native!.fileZeroRuns!(from.file.fd, from.offset, req.length, granule, firstBlock(req.offset, granule, req.length), minZero);
      return withDataRuns(zeros, req.offset, req.length);
    } catch {
      return undefined;
    }
  }

  /**
   * Copies the data run at target offset `at` (inside the request read from `from`). False when
   * these files cannot be copied this way: the caller copies through memory, and so do all later
   * requests. Other failures (ENOSPC, EIO) throw.
   */
  async copy(req: CopyRequest, from: { file: FileNode; offset: number }, at: number, length: number): Promise<boolean> {
    try {
      await native!.copyFileRange!(from.file.fd, from.offset + at - req.offset, this.target.fd, at, length);
      return true;
    } catch (err) {
      if (!NOT_THIS_WAY.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      this.disabled = true;
      return false;
    }
  }
}

/**
 * The file node named `filename` under `node` whose offsets are the host offsets block status
 * gives: a file node itself, or the first node of that name (a raw node straight on its file).
 */
function findFile(node: BlockNode, filename: string): FileNode | undefined {
  if (node instanceof FileNode) return node.filename === filename && node.uncachedBy === undefined ? node : undefined;
  for (const child of node.children.values()) {
    if (child.filename === filename && !(child instanceof FileNode)) {
      // A format node over the file shares its name: only raw, mapping it one to one, will do.
      const file = child.driver === 'raw' ? child.file : undefined;
      return file instanceof FileNode && file.filename === filename && !hasOffset(child) ? findFile(file, filename) : undefined;
    }
    const found = findFile(child, filename);
    if (found) return found;
  }
  return undefined;
}

/** A raw node whose options shift or cut its file (offset=, size=): not one to one. */
function hasOffset(node: BlockNode): boolean {
  return node.size !== node.file?.size;
}
