import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import { STRERROR } from '../../../core/strerror.js';
import type { CorruptionSignal } from './corruption.js';
import type { Qcow2Header } from './header.js';
import type { Refcounts } from './refcounts.js';

/** What qemu-img check reports, under its JSON names. */
export interface CheckResult {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  /** The lines qemu-img prints on stderr while checking ("ERROR cluster 3 refcount=0 reference=1"). */
  messages: string[];
}

export type CheckFix = 'none' | 'leaks' | 'all';

/** What the checker needs from an open image. */
export interface CheckTarget {
  file: BlockNode;
  header: Qcow2Header;
  clusterSize: number;
  size: number;
  /** Active L1 entries, raw (with COPIED bits). */
  l1Entries(): bigint[];
  snapshotTable(): { offset: number; length: number } | undefined;
  /**
   * The whole L2 table at `offset` (cluster-aligned, inside the file) as the image would write
   * it: the bytes on disk with its unwritten changes laid over them. The result is the check's
   * own copy, which it may edit to follow its repairs; the image never sees those edits. A
   * repair reaches the image either through `setCopied` (into the image's cache, written with
   * its next flush) or by writing the file directly, which is safe because this call dropped the
   * image's clean cached slices of the table, so the image reads it from disk again.
   */
  readTable(offset: number): Promise<Uint8Array>;
  /** The image's own refcount reader: what the check repairs, the image sees. */
  refcounts: Refcounts;
  /** Makes `refcounts` read the refcount table the header names now (after a rebuild). */
  reloadRefcounts(): Promise<void>;
  /**
   * The image's corruption signal: a refused repair write marks the image corrupt through it,
   * and the check listens to it for the lines QEMU prints (a refcount block that cannot be read).
   */
  signal: CorruptionSignal;
  /** Rewrites one active L1/L2 entry (for COPIED repairs). */
  setCopied(kind: 'l1' | 'l2', tableOffset: number, index: number, copied: boolean): Promise<void>;
}

/**
 * A check that cannot go on (qemu-img's "Check failed"): a repair write QEMU would refuse. What
 * the check had said until then goes with it, for the caller to print.
 */
export class CheckFailedError extends BlockError {
  constructor(readonly messages: readonly string[], t: CheckTarget, what: string) {
    super('EIO', `Check of qcow2 image '${t.file.filename}' failed: ${what}`, { op: 'check', path: t.file.filename });
  }
}

/** The result so far, the image, and the reads every part of the check shares. */
export class CheckContext {
  readonly res: CheckResult;
  readonly cs: number;

  constructor(readonly t: CheckTarget) {
    this.cs = t.clusterSize;
    this.res = {
      corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0, imageEndOffset: 0,
      totalClusters: Math.ceil(t.size / this.cs), allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0, messages: [],
    };
  }

  say(line: string): void {
    this.res.messages.push(line);
  }

  /** Bytes as QEMU's bdrv_pread gives them: from any offset, zeros past the end of the file. */
  async readRaw(offset: number, length: number): Promise<Uint8Array> {
    const buf = new Uint8Array(length);
    const n = Math.max(0, Math.min(length, this.t.file.size - offset));
    if (n > 0) await this.t.file.read(offset, buf.subarray(0, n));
    return buf;
  }

  /**
   * An L2 table: through the image (`readTable`, which sees its unwritten changes and forgets
   * its cached copy) when it is a whole cluster inside the file, else the raw bytes.
   */
  readL2(offset: number): Promise<Uint8Array> {
    if (offset % this.cs === 0 && offset + this.cs <= this.t.file.size) return this.t.readTable(offset);
    return this.readRaw(offset, this.cs);
  }
}

/**
 * An error as QEMU's messages give it, strerror of its errno: a corrupt image is EIO to QEMU
 * ("Can't get refcount for cluster 3: Input/output error").
 */
export function errnoText(err: unknown): string {
  if (err instanceof BlockError) return STRERROR[err.code === 'E_CORRUPT' ? 'EIO' : err.code] ?? err.message;
  return err instanceof Error ? err.message : String(err);
}
