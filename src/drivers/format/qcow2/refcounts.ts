import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import { REFT_OFFSET_MASK } from './constants.js';
import type { Qcow2Header } from './header.js';
import { TableCache } from './table-cache.js';

/**
 * Reads refcounts (spec §5): refcount table → refcount block → an entry of 1–64 bits. Widths
 * below a byte are packed least-significant bits first within each byte.
 */
export class Refcounts {
  readonly clusterSize: number;
  readonly bits: number;
  /** Entries per refcount block. */
  readonly perBlock: number;
  private readonly cache: TableCache;

  private constructor(
    private readonly file: BlockNode,
    private readonly path: string,
    header: Qcow2Header,
    /** Refcount block offsets, 0 where none is allocated. */
    readonly table: number[],
    cacheBytes: number,
  ) {
    this.clusterSize = 2 ** header.clusterBits;
    this.bits = 2 ** header.refcountOrder;
    this.perBlock = (this.clusterSize * 8) / this.bits;
    this.cache = new TableCache(cacheBytes, async (offset) => {
      const block = new Uint8Array(this.clusterSize);
      await this.file.read(offset, block);
      return block;
    });
  }

  static async load(file: BlockNode, header: Qcow2Header, path: string, cacheBytes: number): Promise<Refcounts> {
    const clusterSize = 2 ** header.clusterBits;
    const bytes = header.refcountTableClusters * clusterSize;
    if (header.refcountTableOffset + bytes > file.size) {
      throw new BlockError('E_CORRUPT', `qcow2 image '${path}' is corrupt: the refcount table lies past the end of the file`, { op: 'open', path });
    }
    const raw = new Uint8Array(bytes);
    await file.read(header.refcountTableOffset, raw);
    const dv = new DataView(raw.buffer);
    const table: number[] = [];
    for (let i = 0; i < bytes / 8; i++) {
      const e = dv.getBigUint64(i * 8);
      if (e & ~REFT_OFFSET_MASK) throw new BlockError('E_CORRUPT', `qcow2 image '${path}' is corrupt: refcount table entry ${i} has reserved bits set`, { op: 'open', path });
      const off = Number(e);
      if (off % clusterSize !== 0 || off > Number.MAX_SAFE_INTEGER) {
        throw new BlockError('E_CORRUPT', `qcow2 image '${path}' is corrupt: refcount block ${i} at 0x${e.toString(16)} is misaligned`, { op: 'open', path });
      }
      table.push(off);
    }
    return new Refcounts(file, path, header, table, cacheBytes);
  }

  /** The refcount of host cluster `index` (cluster number, not byte offset). */
  async get(index: number): Promise<number> {
    const tableIndex = Math.floor(index / this.perBlock);
    const blockOffset = this.table[tableIndex] ?? 0;
    if (blockOffset === 0) return 0;
    if (blockOffset + this.clusterSize > this.file.size) {
      throw new BlockError('E_CORRUPT', `qcow2 image '${this.path}' is corrupt: refcount block ${tableIndex} lies past the end of the file`, { op: 'read', path: this.path });
    }
    return readEntry(await this.cache.get(blockOffset), index % this.perBlock, this.bits);
  }
}

export function readEntry(block: Uint8Array, i: number, bits: number): number {
  switch (bits) {
    case 8: return block[i]!;
    case 16: return (block[i * 2]! << 8) | block[i * 2 + 1]!;
    case 32: return new DataView(block.buffer, block.byteOffset).getUint32(i * 4);
    case 64: {
      const v = new DataView(block.buffer, block.byteOffset).getBigUint64(i * 8);
      // A refcount beyond 2^53 is as good as "many"; it only needs to compare greater than 1.
      return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
    }
    default: {
      const perByte = 8 / bits;
      return (block[Math.floor(i / perByte)]! >> ((i % perByte) * bits)) & ((1 << bits) - 1);
    }
  }
}
