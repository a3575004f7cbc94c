import { FADV, SYNC_FILE_RANGE, type NativeAddon } from '../../../native/index.js';

/**
 * cache=none where the file system refuses O_DIRECT (ramfs, some FUSE and network file systems):
 * I/O goes through the page cache and the pages are dropped behind it, as GNU dd's `nocache`
 * and nbdcopy do. Clean pages drop at once; dirty ones cannot, so each write starts its own
 * writeback, and once more than WINDOW bytes wait, the oldest are waited for and dropped. The
 * window bounds both the cache a copy uses and how far writeback may lag behind it.
 */
export const EVICT_WINDOW = 32 * 1024 * 1024;

const WAIT_ALL = SYNC_FILE_RANGE.WAIT_BEFORE | SYNC_FILE_RANGE.WRITE | SYNC_FILE_RANGE.WAIT_AFTER;

export class EvictBehind {
  /** Written ranges not yet dropped, oldest first: [offset, length] pairs. */
  private readonly written: [number, number][] = [];
  private writtenBytes = 0;
  /** Reads happened since the last drain: their readahead may have cached pages past them. */
  private readSome = false;

  constructor(private readonly native: NativeAddon, private readonly fd: number, private readonly window = EVICT_WINDOW) {}

  /** Drops pages just read: their data is in the caller's buffer now. */
  afterRead(offset: number, length: number): void {
    this.readSome = true;
    this.dontNeed(offset, length);
  }

  /**
   * Starts writeback of a range just written; when the window is full, waits for the oldest
   * ranges to reach the disk and drops them. An error here is a writeback error of this file:
   * sync_file_range consumes it, so the caller must report it (fdatasync would not see it again).
   */
  async afterWrite(offset: number, length: number): Promise<void> {
    await this.native.syncFileRange(this.fd, offset, length, SYNC_FILE_RANGE.WRITE);
    this.written.push([offset, length]);
    this.writtenBytes += length;
    while (this.writtenBytes > this.window) await this.evictOldest();
  }

  /**
   * Waits for and drops everything still in the window (before a flush returns, and at close),
   * and what readahead brought in past the reads: the kernel reads ahead of each read, and
   * pages a later read did not ask for were never dropped.
   */
  async drain(): Promise<void> {
    while (this.written.length > 0) await this.evictOldest();
    if (this.readSome) this.dontNeed(0, 0);
    this.readSome = false;
  }

  private async evictOldest(): Promise<void> {
    // Taken off before the wait, so concurrent writers each take a different range.
    const [offset, length] = this.written.shift()!;
    this.writtenBytes -= length;
    await this.native.syncFileRange(this.fd, offset, length, WAIT_ALL);
    this.dontNeed(offset, length);
  }

  /** Advice only: a failure (a file system without it) leaves the pages cached, nothing worse. */
  private dontNeed(offset: number, length: number): void {
    try {
      this.native.fadvise(this.fd, offset, length, FADV.DONTNEED);
    } catch {
      // Nothing to do: the data is correct either way.
    }
  }
}
