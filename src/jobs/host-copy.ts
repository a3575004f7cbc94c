import type { BlockNode } from '../core/block-node.js';
import { FileNode } from '../drivers/protocol/file/file-node.js';
import { native } from '../native/index.js';
import type { GuestRange, HostAllocation } from '../drivers/format/qcow2/host-alloc.js';
import type { Qcow2Node } from '../drivers/format/qcow2/qcow2-node.js';
import type { CopyRequest } from './copy-plan.js';
import { rawFile } from './clone-plan.js';
import { firstBlock, withDataRuns, type SparseRun } from './sparse-runs.js';

/** Errors that mean these two files cannot be copied with copy_file_range: copy through memory instead. */
const NOT_THIS_WAY = new Set(['EXDEV', 'EINVAL', 'EOPNOTSUPP', 'ENOTSUP', 'ENOSYS', 'EBADF']);

/** Where a data request's bytes come from: a host file and the offset of the request's first byte. */
export interface HostSource {
  file: FileNode;
  offset: number;
}

/** What the copy engine does for the parts of a request that are not copied in the kernel. */
export interface HostCopySink {
  /** Makes [offset, offset + length) of the target read as zeros (a zero run of -S). */
  zero(offset: number, length: number): Promise<void>;
  /** Reads [offset, offset + length) from the sources and writes `runs` (covering it) the ordinary way. */
  memory(offset: number, length: number, runs: readonly SparseRun[]): Promise<void>;
  /** Runs one write and names its failure as qemu-img does. */
  step<T>(what: 'writing', offset: number, io: () => Promise<T>): Promise<T>;
}

/**
 * Data requests copied in the kernel (copy_file_range) where both ends are plain files: the
 * request's bytes lie in one piece in a host file under the source (a raw image's file, a qcow2
 * image's uncompressed clusters), and the target is a raw image straight on a file or a qcow2
 * image on one, whose new clusters are allocated for the copy and linked after it
 * (host-alloc.ts). The bytes are not copied through the process at all, and zero detection (-S)
 * scans them through a read-only mapping of the source, which copies nothing either: one copy
 * in the kernel instead of two through a buffer, and none of the per-request work of the
 * source and target drivers.
 *
 * Both files must use the page cache (not cache=none: copy_file_range is a buffered copy).
 */
export class HostCopy {
  /** Source host files by filename (undefined: no usable file has that name). */
  private readonly files = new Map<string, FileNode | undefined>();
  private disabled = false;

  private constructor(private readonly target: RawTarget | Qcow2Target) {}

  /** The host copy for a copy into this node (a qcow2 one only when `allocating`), or undefined where it cannot be used. */
  static async create(target: BlockNode, opts: { allocating?: boolean } = {}): Promise<HostCopy | undefined> {
    if (!native?.copyFileRange || !native.fileZeroRuns || target.readOnly || target.detectZeroes !== 'off') return undefined;
    if (target.driver === 'qcow2') {
      if (!opts.allocating) return undefined;
      // New clusters go to the image's file; an external data file takes the ordinary way.
      const file = target.file;
      if (!(file instanceof FileNode) || !usable(file) || target.children.has('data-file')) return undefined;
      return new HostCopy({ kind: 'qcow2', node: target as Qcow2Node });
    }
    const file = await rawFile(target);
    if (!file || !usable(file)) return undefined;
    return new HostCopy({ kind: 'raw', file });
  }

  /** The source file and offset of a data request, or undefined: it goes through memory. */
  route(req: CopyRequest): HostSource | undefined {
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
  async scan(req: CopyRequest, from: HostSource, granule: number, minZero: number): Promise<SparseRun[] | undefined> {
    if (minZero === 0) return [{ offset: req.offset, length: req.length, zero: false }];
    try {
      const zeros = await native!.fileZeroRuns!(from.file.fd, from.offset, req.length, granule, firstBlock(req.offset, granule, req.length), minZero);
      return withDataRuns(zeros, req.offset, req.length);
    } catch {
      return undefined;
    }
  }

  /** Writes the request's `runs` (from scan): data runs copied in the kernel where they can be, the rest through the sink. */
  async write(req: CopyRequest, from: HostSource, runs: readonly SparseRun[], sink: HostCopySink): Promise<void> {
    if (this.target.kind === 'raw') return this.writeRaw(this.target.file, req, from, runs, sink);
    return this.writeQcow2(this.target.node, req, from, runs, sink);
  }

  private async writeRaw(file: FileNode, req: CopyRequest, from: HostSource, runs: readonly SparseRun[], sink: HostCopySink): Promise<void> {
    try {
      for (const [i, run] of runs.entries()) {
        if (run.zero) {
          await sink.zero(run.offset, run.length);
        } else if (!(await sink.step('writing', run.offset, () => this.copy(from, req, run.offset, file, run.offset, run.length)))) {
          // These files cannot be copied this way after all: the rest goes through memory.
          return await sink.memory(run.offset, req.offset + req.length - run.offset, runs.slice(i));
        }
      }
    } finally {
      // Written behind the file node's back: a hole it remembers may be data now.
      file.dropCachedHoles();
    }
  }

  /**
   * Into a qcow2 image: whole clusters holding data get host clusters (host-alloc.ts), the data
   * is copied into them (whole clusters, or with extended L2 the subclusters holding data), and
   * then they are linked; clusters with no data are zero runs as ever. Partial clusters at the
   * request's ends, and clusters the image cannot allocate this way, go through memory.
   */
  private async writeQcow2(node: Qcow2Node, req: CopyRequest, from: HostSource, runs: readonly SparseRun[], sink: HostCopySink): Promise<void> {
    const cs = node.clusterSize;
    const start = req.offset;
    const end = req.offset + req.length;
    const a = Math.min(end, Math.ceil(start / cs) * cs);
    const b = Math.max(a, Math.floor(end / cs) * cs);
    if (start < a) await sink.memory(start, a - start, clip(runs, start, a));
    // Groups of neighbouring clusters that hold data; the clusters between them are zeros.
    let pos = a;
    for (const group of clusterGroups(runs, a, b, cs)) {
      await zeros(sink, pos, group.start);
      await this.allocated(node, req, from, clip(runs, group.start, group.end), group, sink);
      pos = group.end;
    }
    await zeros(sink, pos, b);
    if (b < end) await sink.memory(b, end - b, clip(runs, b, end));
  }

  /** One group of clusters holding data: allocated, copied into, linked; or through memory. */
  private async allocated(node: Qcow2Node, req: CopyRequest, from: HostSource, runs: readonly SparseRun[], group: { start: number; end: number }, sink: HostCopySink): Promise<void> {
    const length = group.end - group.start;
    const alloc = this.disabled ? undefined : await sink.step('writing', group.start, () => node.allocateHostRange(group.start, length));
    const file = alloc?.file;
    if (!alloc || !(file instanceof FileNode) || file.fd < 0) {
      await alloc?.abort();
      return sink.memory(group.start, length, runs);
    }
    // The data, in whole units the image allocates (extended L2: subclusters); zeros around it are copied as they are.
    const written = coalesce(runs.filter((r) => !r.zero), alloc.granule);
    let copied = false;
    try {
      copied = await this.copyInto(alloc, written, from, req, file, sink);
    } catch (err) {
      await alloc.abort();
      throw err;
    } finally {
      file.dropCachedHoles();
    }
    if (!copied) {
      await alloc.abort();
      return sink.memory(group.start, length, runs);
    }
    await sink.step('writing', group.start, () => alloc.commit(written));
    // Units without data inside the group (extended L2) were not written: zero runs as ever.
    let at = group.start;
    for (const w of written) {
      await zeros(sink, at, w.offset);
      at = w.offset + w.length;
    }
    await zeros(sink, at, group.end);
  }

  /** Copies the written ranges into the allocation's host runs; false when these files cannot be copied this way. */
  private async copyInto(alloc: HostAllocation, written: readonly GuestRange[], from: HostSource, req: CopyRequest, file: FileNode, sink: HostCopySink): Promise<boolean> {
    for (const w of written) {
      for (const r of alloc.runs) {
        const s = Math.max(r.offset, w.offset);
        const e = Math.min(r.offset + r.length, w.offset + w.length);
        if (s >= e) continue;
        if (!(await sink.step('writing', s, () => this.copy(from, req, s, file, r.host + s - r.offset, e - s)))) return false;
      }
    }
    return true;
  }

  /**
   * Copies `length` bytes of the request from target offset `at` into `file` at `to`. False when
   * these files cannot be copied this way: the caller copies through memory, and so do all later
   * requests. Other failures (ENOSPC, EIO) throw.
   */
  private async copy(from: HostSource, req: CopyRequest, at: number, file: FileNode, to: number, length: number): Promise<boolean> {
    try {
      await native!.copyFileRange!(from.file.fd, from.offset + at - req.offset, file.fd, to, length);
      return true;
    } catch (err) {
      if (!NOT_THIS_WAY.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      this.disabled = true;
      return false;
    }
  }
}

type RawTarget = { kind: 'raw'; file: FileNode };
type Qcow2Target = { kind: 'qcow2'; node: Qcow2Node };

/** A zero run, when not empty. */
function zeros(sink: HostCopySink, from: number, to: number): Promise<void> | undefined {
  return from < to ? sink.zero(from, to - from) : undefined;
}

/** The runs' parts inside [start, end). */
export function clip(runs: readonly SparseRun[], start: number, end: number): SparseRun[] {
  const out: SparseRun[] = [];
  for (const r of runs) {
    const s = Math.max(r.offset, start);
    const e = Math.min(r.offset + r.length, end);
    if (s < e) out.push({ offset: s, length: e - s, zero: r.zero });
  }
  return out;
}

/** The runs of neighbouring `cs`-clusters in [start, end) (cluster-aligned) that hold some data. */
export function clusterGroups(runs: readonly SparseRun[], start: number, end: number, cs: number): { start: number; end: number }[] {
  return coalesce(clip(runs, start, end).filter((r) => !r.zero), cs).map((r) => ({ start: r.offset, end: r.offset + r.length }));
}

/** The ranges widened to whole `unit`s (aligned from 0) and merged where they touch. */
export function coalesce(ranges: readonly GuestRange[], unit: number): GuestRange[] {
  const out: GuestRange[] = [];
  for (const r of ranges) {
    const s = Math.floor(r.offset / unit) * unit;
    const e = Math.ceil((r.offset + r.length) / unit) * unit;
    const last = out[out.length - 1];
    if (last && last.offset + last.length >= s) last.length = Math.max(last.offset + last.length, e) - last.offset;
    else out.push({ offset: s, length: e - s });
  }
  return out;
}

/**
 * The file node named `filename` under `node` whose offsets are the host offsets block status
 * gives: a file node itself, or the first node of that name (a raw node straight on its file,
 * an image's file).
 */
/**
 * A file the kernel may copy from or into: through the page cache (copy_file_range is a buffered
 * copy), and without a deadline. The zero scan maps the source and copy_file_range runs on
 * libuv's pool, where a dead NFS or FUSE mount would hold the copy past --timeout; the copy
 * through memory goes through the I/O queue, whose requests fail with ETIMEDOUT instead.
 */
function usable(file: FileNode): boolean {
  return file.uncachedBy === undefined && file.timeoutMs === 0;
}

function findFile(node: BlockNode, filename: string): FileNode | undefined {
  if (node instanceof FileNode) return node.filename === filename && usable(node) ? node : undefined;
  for (const child of node.children.values()) {
    if (child.filename === filename && child.driver === 'raw') {
      // A raw node over the file shares its name: it will do when it maps the file one to one.
      const file = child.file;
      return file instanceof FileNode && file.filename === filename && !hasOffset(child) ? findFile(file, filename) : undefined;
    }
    // Other format nodes (an image of a chain under a commit's view) name their files' host
    // offsets in block status: their file is among their children.
    const found = findFile(child, filename);
    if (found) return found;
  }
  return undefined;
}

/** A raw node whose options shift or cut its file (offset=, size=): not one to one. */
function hasOffset(node: BlockNode): boolean {
  return node.size !== node.file?.size;
}
