import type { BlockNode } from '../../../core/block-node.js';
import { isNotSupported } from '../../../core/errors.js';

/** Which parts of a new cluster read as zeros in the backing chain (so copy-on-write would copy zeros). */
export interface ZeroParts {
  /** [cluster start, write start) */
  head: boolean;
  /** the range the guest writes */
  middle: boolean;
  /** [write end, cluster end) */
  tail: boolean;
}

const ALL_ZERO: ZeroParts = Object.freeze({ head: true, middle: true, tail: true });

/**
 * QEMU's handle_alloc_space: the parts of a newly allocated cluster that a write leaves
 * untouched must read as before, and where that is zeros (no backing data lies under them) a
 * cheap `allocate` zero write of the host cluster does it instead of writing zero buffers.
 * The storage decides what is cheap (fallocate; a preallocated tail costs nothing); once it
 * answers ENOTSUP this stops asking, and copy-on-write writes the zeros as before.
 */
export class AllocSpace {
  private enabled: boolean;

  constructor(private readonly parts: {
    dataFile: BlockNode;
    /** Unallocated guest ranges read from here (undefined: they read as zeros). */
    backing: BlockNode | undefined;
    /** Off: always copy-on-write with buffers (a knob for benchmarks and comparisons). */
    enabled: boolean;
  }) {
    this.enabled = parts.enabled;
  }

  get active(): boolean {
    return this.enabled;
  }

  /**
   * For the cluster at guest offset `base` (length `cs`) and a write of [from, to) inside it:
   * which parts are zeros in the backing chain. Block status only, as QEMU's is_zero_cow: data
   * that happens to be zero counts as data.
   */
  async zeroParts(base: number, cs: number, from: number, to: number): Promise<ZeroParts> {
    const backing = this.parts.backing;
    if (!backing || base >= backing.size) return ALL_ZERO;
    const end = Math.min(base + cs, backing.size);
    // Where the backing chain has data, relative to the cluster.
    const data: [number, number][] = [];
    for await (const list of backing.extentLists(base, end - base)) {
      for (const e of list) if (!e.zero) data.push([e.offset - base, e.offset + e.length - base]);
    }
    const clear = (a: number, b: number) => a >= b || data.every(([s, e]) => e <= a || s >= b);
    return { head: clear(0, from), middle: clear(from, to), tail: clear(to, cs) };
  }

  /** Zeroes [host, host + length) of the data file cheaply; false when the storage cannot. */
  async zero(host: number, length: number): Promise<boolean> {
    try {
      await this.parts.dataFile.writeZeroes(host, length, { allocate: true });
      return true;
    } catch (err) {
      if (!isNotSupported(err)) throw err;
      this.enabled = false;
      return false;
    }
  }
}
