import type { BlockNode } from '../core/block-node.js';
import { fromSystemError } from '../core/errors.js';
import { FileNode } from '../drivers/protocol/file/file-node.js';
import { native, SYNC_FILE_RANGE } from '../native/index.js';

/** Bytes a job moves between two starts of writeback (64 MiB measured best against 16 and 256). */
const DEFAULT_EVERY = 64 * 1024 * 1024;

/**
 * Starts the host's writeback of the files a job writes while the job goes on (sync_file_range
 * WRITE, which neither waits nor consumes a write error), so that the flush at its end finds
 * little left to write. Through the page cache a copy runs at memory speed and the disk waits
 * until the end: the kernel starts writing back only past dirty_background_ratio (gigabytes on
 * a large host), so a job flushing 1 GiB at the end spends as long flushing as copying. Started
 * along the way, the disk writes while the job copies. A hint only: it changes nothing of what
 * a flush promises, and files opened uncached (nothing to write back) are left alone.
 */
export class WritebackAhead {
  private readonly files: FileNode[];
  /** Bytes moved since writeback was last started. */
  private since = 0;
  private running: Promise<void> | undefined;
  private failure: unknown;

  constructor(node: BlockNode, private readonly every = DEFAULT_EVERY) {
    this.files = native ? writebackFiles(node) : [];
  }

  /** `bytes` more moved: starts writeback once `every` have been, one start at a time. */
  moved(bytes: number): void {
    if (this.files.length === 0) return;
    this.since += bytes;
    if (this.since < this.every || this.running) return;
    this.since = 0;
    this.running = this.start().finally(() => (this.running = undefined));
  }

  /** Waits for a start under way; a write error it met is the job's (the flush may not see it again). */
  async settle(): Promise<void> {
    await this.running;
    if (this.failure !== undefined) throw this.failure;
  }

  private async start(): Promise<void> {
    for (const file of this.files) {
      try {
        await native!.syncFileRange(file.fd, 0, 0, SYNC_FILE_RANGE.WRITE);
      } catch (err) {
        this.failure ??= fromSystemError(err, { op: 'write back', path: file.filename });
      }
    }
  }
}

/** The cached host files below `node` that hold its own data (its file, a data file), not its backing chain's. */
export function writebackFiles(node: BlockNode): FileNode[] {
  if (node instanceof FileNode) return node.uncachedBy === undefined ? [node] : [];
  return [...node.children].filter(([role]) => role !== 'backing').flatMap(([, child]) => writebackFiles(child));
}
