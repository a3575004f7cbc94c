import type { BlockNode } from '../core/block-node.js';
import { BlockError, NotSupportedError } from '../core/errors.js';
import { FileNode } from '../drivers/protocol/file/file-node.js';
import { native } from '../native/index.js';

/**
 * `convert --reflink`, as cp's: `auto` clones where it can and copies elsewhere, `always` fails
 * where it cannot clone, `never` copies.
 */
export type ReflinkMode = 'auto' | 'always' | 'never';

export interface CloneOptions {
  sources: readonly BlockNode[];
  target: BlockNode;
  reflink: ReflinkMode;
  /** The target reads as zeros already: the sources' holes need nothing done. */
  targetIsZero: boolean;
  /** convert -B: the target is an overlay (never a raw image, so never cloned). */
  targetBacking?: { size: number };
  /** -S: 0 asks for a fully allocated target, which sharing extents and keeping holes is not. */
  sparseSize: number;
  checkpoint?: () => Promise<void>;
  onProgress?: (bytes: number) => void;
}

/** Cloned per call: small enough for progress and cancel, big enough to cost nothing. */
const WINDOW = 256 * 1024 * 1024;
/** The copy buffer where one window has to be copied after all. */
const COPY_CHUNK = 2 * 1024 * 1024;

/**
 * Raw images straight on files, on one file system that shares extents (XFS with reflink,
 * btrfs): the target's extents are cloned from the sources' (FICLONERANGE), data runs only, so
 * holes stay holes and no data moves. Returns true when the target is complete, false when the
 * caller must copy everything (`never`; `auto` where nothing could be cloned). Under `always`,
 * a copy that cannot be a clone fails instead, with the reason.
 */
export async function cloneImage(o: CloneOptions): Promise<boolean> {
  if (o.reflink === 'never') return false;
  const files = await cloneableFiles(o);
  if (typeof files === 'string') {
    if (o.reflink === 'always') throw new NotSupportedError(`--reflink=always: ${files}`, { op: 'convert', path: o.target.filename });
    return false;
  }
  const { target, sources } = files;
  // Progress of windows that held only holes waits until cloning is known to work, so a
  // fallback to copying does not count them twice.
  let cloned = false;
  let unreported = 0;
  let base = 0;
  for (const [i, source] of o.sources.entries()) {
    for (let pos = 0; pos < source.size; pos += WINDOW) {
      await o.checkpoint?.();
      const n = Math.min(WINDOW, source.size - pos);
      try {
        cloned = (await target.cloneRange(sources[i]!, pos, base + pos, n, { targetIsZero: o.targetIsZero })) > 0 || cloned;
      } catch (err) {
        if (!(err instanceof NotSupportedError) || o.reflink === 'always') throw err;
        // Nothing shared yet: the copy engine does all of it better (zero detection, requests
        // in flight). Otherwise only this window is copied (an unaligned seam between sources).
        if (!cloned) return false;
        await copyWindow(source, pos, o.target, base + pos, n, o.targetIsZero);
      }
      unreported += n;
      if (cloned) {
        o.onProgress?.(unreported);
        unreported = 0;
      }
    }
    base += source.size;
  }
  if (unreported > 0) o.onProgress?.(unreported);
  await o.target.flush();
  return true;
}

/** The files to clone between, or why there are none. */
async function cloneableFiles(o: CloneOptions): Promise<{ target: FileNode; sources: FileNode[] } | string> {
  if (!native) return 'cloning needs the native addon, which is not loaded';
  if (o.sparseSize === 0) return '-S 0 asks for a fully allocated target; a clone shares extents and keeps holes';
  if (o.targetBacking) return 'the target has a backing file';
  const target = await rawFile(o.target);
  if (!target) return `the target '${o.target.filename}' is not a raw image on a file`;
  const sources: FileNode[] = [];
  for (const s of o.sources) {
    const file = await rawFile(s);
    if (!file) return `the source '${s.filename}' is not a raw image on a file`;
    sources.push(file);
  }
  return { target, sources };
}

/** The file a raw image maps one to one (no offset), or undefined. */
export async function rawFile(node: BlockNode): Promise<FileNode | undefined> {
  const file = node.file;
  if (node.driver !== 'raw' || !(file instanceof FileNode)) return undefined;
  if (node.size === 0) return file;
  // The raw node keeps its file's host offsets: byte 0 at host offset 0 means no `offset` option.
  const [first] = await node.blockStatusList(0, 1);
  return first?.hostOffset === 0 && first.hostFile === file.filename ? file : undefined;
}

/** Copies one window the plain way: data read and written, holes zeroed unless already zero. */
async function copyWindow(source: BlockNode, offset: number, target: BlockNode, at: number, length: number, targetIsZero: boolean): Promise<void> {
  const align = Math.max(source.limits.memoryAlignment, target.limits.memoryAlignment);
  const buf = align > 1 && native ? native.alignedBuffer(COPY_CHUNK, align) : new Uint8Array(COPY_CHUNK);
  for (let pos = offset; pos < offset + length;) {
    const [e] = await source.blockStatusList(pos, offset + length - pos);
    if (!e) throw new BlockError('EIO', `no block status for '${source.filename}' at ${pos}`, { op: 'convert', offset: pos });
    const n = e.data ? Math.min(e.length, COPY_CHUNK) : e.length;
    const to = at + pos - offset;
    if (e.data) {
      const data = buf.subarray(0, n);
      await source.read(pos, data);
      await target.write(to, data);
    } else if (!targetIsZero) {
      await target.writeZeroes(to, n, { mayUnmap: true });
    }
    pos += n;
  }
}
