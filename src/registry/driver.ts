import type { BlockNode } from '../core/block-node.js';
import type { CacheMode } from '../drivers/protocol/file/file-node.js';
import type { DetectZeroes, DiscardMode } from '../core/types.js';
import type { OpenGate } from './open-gate.js';

/** A QEMU `-blockdev`-style node description: `{ driver: 'raw', file: { driver: 'file', filename } }`. */
export interface NodeSpec {
  driver: string;
  [option: string]: unknown;
}

export interface OpenOptions {
  /** Format of the top image; probed when absent. */
  format?: string;
  readOnly?: boolean;
  /** Host cache mode of the protocol leaves (qemu-io/qemu-img `-t`). */
  cache?: CacheMode;
  detectZeroes?: DetectZeroes;
  /**
   * QEMU's discard=: whether discard requests reach the image (unmap) or succeed doing nothing
   * (ignore). The library's default is unmap; detect-zeroes=unmap requires it.
   */
  discard?: DiscardMode;
  /** Insert a copy-on-read filter above the top image (QEMU's copy-on-read=on, qemu-io -C). */
  copyOnRead?: boolean;
  locking?: 'auto' | 'on' | 'off';
  /** Who may be opened when an image names another file (backing, data file). */
  gate?: OpenGate;
  /** Longest backing chain followed before giving up. */
  maxChainDepth?: number;
  /**
   * Open for checking (QEMU's BDRV_O_CHECK): images marked corrupt or dirty open writable and
   * nothing is repaired on open, so the check sees them as they are.
   */
  check?: boolean;
  /**
   * Seconds a network protocol waits for its server (each connect, handshake and request) before
   * failing with ETIMEDOUT. Absent or 0: no limit, unless the node's own option sets one.
   */
  networkTimeout?: number;
  /**
   * Seconds each read or write of a local file may take before failing with ETIMEDOUT (a dead
   * NFS or FUSE mount; the system call is left behind). Absent or 0: no limit.
   */
  fileTimeout?: number;
}

export interface OpenContext {
  readonly options: Readonly<OpenOptions>;
  /** How many image references deep this open is (0 for what the user named). */
  readonly depth: number;
  /** Opens a child that the spec itself describes (a `file` child). */
  openChild(spec: NodeSpec | string, role: string): Promise<BlockNode>;
  /**
   * Opens a file that an image names (backing file, data file), through the open gate and the
   * chain-depth limit, relative to the naming image's directory.
   */
  openReference(name: string, opts: { format?: string; relativeTo: string; role: string; readOnly?: boolean }): Promise<BlockNode>;
  /** Names the format a header would probe as (for raw's sector-0 guard). */
  probeFormat(head: Uint8Array): string | undefined;
}

/** What `create` asks of a format driver: a new image at `filename` (`-o key=value` options as given). */
export interface CreateRequest {
  filename: string;
  size: number;
  options: Record<string, string>;
}

/** One `-o` option of `create` (QEMU's QemuOptDesc). */
export interface CreateOption {
  readonly name: string;
  /** size and number values show as parsed numbers ("64k" as 65536), the rest as given. */
  readonly type: 'size' | 'number' | 'bool' | 'string';
  /** Shown when the option is not given (QEMU's def_value_str). */
  readonly default?: string;
}

/** A `-o` value as QEMU's option parser leaves it: sizes and numbers as unsigned 64-bit integers. */
export type CreateOptionValue = string | bigint | boolean;

/** What `measure` asks of a format driver (qemu-img measure): the file size a new image would need. */
export interface MeasureRequest {
  /** The `-o` options, typed by `createOptions` (plus the file protocol's); `--size` arrives as `size`. */
  options: ReadonlyMap<string, CreateOptionValue>;
  /** The image whose contents the new image would hold; absent when measuring a bare size. */
  input?: BlockNode;
  /**
   * The length to measure `input` over, when not its size: QEMU keeps the active image's length
   * when it loads an internal snapshot (`-l`) taken at another size. Beyond `input.size` counts as zeros.
   */
  inputLength?: number;
}

/** qemu-img measure's answer (QEMU's BlockMeasureInfo), in bytes. */
export interface MeasureInfo {
  required: bigint;
  fullyAllocated: bigint;
  /** Space the input's persistent bitmaps would take; only where both images can hold them. */
  bitmaps?: bigint;
}

export interface DriverDef {
  readonly name: string;
  readonly aliases?: readonly string[];
  readonly kind: 'protocol' | 'format' | 'filter';
  /**
   * URI schemes a protocol driver claims in filenames (QEMU's protocol_name): a filename
   * `scheme:…` opens this driver with `{ filename }` instead of the file driver.
   */
  readonly protocols?: readonly string[];
  /** Option keys the driver accepts besides `driver`, `node-name`, `read-only`, `detect-zeroes`. */
  readonly options: readonly string[];
  /** Score for how sure the driver is that `head` (the first bytes) is its format; 0 = not mine. */
  probe?(head: Uint8Array, filename: string): number;
  open(spec: NodeSpec, ctx: OpenContext): Promise<BlockNode>;
  /**
   * Filters: builds the filter over a node that is open already, as an open option such as
   * copy-on-read=on inserts it (`spec` holds the filter's options). Closes `child` if it fails.
   */
  insert?(child: BlockNode, spec: NodeSpec): Promise<BlockNode>;
  /** The `-o` options `create` accepts, in the order qemu-img's "Formatting" line shows them. */
  readonly createOptions?: readonly CreateOption[];
  /** Creates a new image; validates its options with one-line EINVAL errors. */
  create?(req: CreateRequest): Promise<void>;
  /** Measures what an image of this format would take, for a size or an input image. */
  measure?(req: MeasureRequest): Promise<MeasureInfo>;
  /**
   * A stand-in whose code loads on first use (lazy-driver.ts): it knows its names and kind, and
   * `load()` gives the driver itself, whose `options` and the rest are the ones that count.
   */
  load?(): Promise<DriverDef>;
}
