import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import { REFT_OFFSET_MASK } from './constants.js';
import type { Qcow2Header } from './header.js';
import { TableCache } from './table-cache.js';

/**
 * Refcounts (spec §5): refcount table → refcount block → an entry of 1–64 bits. Widths below a
 * byte are packed least-significant bits first within each byte.
 *
 * Writes stay in memory until flush. New references count up at once (the increments reach the
 * disk before anything that points at the clusters); frees wait in `pendingFrees` until the
 * caller has written the tables that dropped the references, and only then count down, so a
 * crash at any moment can leak clusters but never leave a reference to a free one. Freed
 * clusters are not reused before their decrement is on disk.
 */
/** QEMU's MIN_REFCOUNT_CACHE_SIZE, in blocks. */
const MIN_REFCOUNT_CACHE_ENTRIES = 4;

export class Refcounts {
  readonly clusterSize: number;
  readonly bits: number;
  /** Entries per refcount block. */
  readonly perBlock: number;
  /**
   * Refcount block offsets by table index, 0 where none is allocated: the entries with their
   * reserved bits dropped, as QEMU reads them (REFT_OFFSET_MASK).
   */
  readonly table: number[];
  /** Entries that cannot be followed (a misaligned block), with QEMU's words for why. */
  private unusable: Map<number, string>;
  /** Refcount blocks by host offset; changed ones stay there, pinned, until written. */
  private readonly cache: TableCache;
  /** Refcount-table entries changed in memory and not yet written. */
  private readonly dirtyTable = new Set<number>();
  /** Host cluster indexes whose refcount drops by one at the next flush. */
  private pendingFrees: number[] = [];
  /** No free cluster below this index (QEMU's free_cluster_index). */
  private freeHint = 0;
  private tableOffset: number;
  private tableClusters: number;
  /** Bumped whenever a refcount block or the table moves or appears. */
  version = 0;
  /** Bumped whenever pending frees are applied: a cluster seen in use may be free, or reused, since. */
  freesApplied = 0;
  /**
   * Two table entries naming one refcount block, if the image has them. Reads are fine, but
   * every count in that block would stand for two ranges of clusters, so nothing is allocated.
   */
  private sharedBlock: string | undefined;

  private constructor(
    private readonly file: BlockNode,
    private readonly path: string,
    header: Qcow2Header,
    loaded: RefcountTable,
    cacheBytes: number,
    /** Signals metadata that cannot be followed (QEMU's qcow2_signal_corruption); returns the error. */
    private readonly signal: Signal,
  ) {
    this.clusterSize = 2 ** header.clusterBits;
    this.bits = 2 ** header.refcountOrder;
    this.perBlock = (this.clusterSize * 8) / this.bits;
    this.tableOffset = header.refcountTableOffset;
    this.tableClusters = header.refcountTableClusters;
    this.table = loaded.table;
    this.unusable = loaded.unusable;
    this.sharedBlock = findSharedBlock(this.table);
    const entries = Math.max(MIN_REFCOUNT_CACHE_ENTRIES, Math.floor(cacheBytes / this.clusterSize));
    this.cache = new TableCache(this.clusterSize, entries, async (offset, into) => {
      // Only blocks on disk load through here; new ones are created dirty and stay until written.
      if (offset + this.clusterSize > this.file.size) {
        throw new BlockError('E_CORRUPT', `qcow2 image '${this.path}' is corrupt: a refcount block at 0x${offset.toString(16)} lies past the end of the file`, { op: 'read', path: this.path });
      }
      await this.file.read(offset, into);
    });
  }

  static async load(file: BlockNode, header: Qcow2Header, path: string, cacheBytes: number, signal: Signal): Promise<Refcounts> {
    return new Refcounts(file, path, header, await readTable(file, header, path), cacheBytes, signal);
  }

  /**
   * Reads the refcount table again from where the header says it is now: a check rebuilt the
   * refcount structures and switched the header to them. Everything held for the old ones goes
   * (cached blocks, the free-cluster hint); there must be nothing unwritten, since it would
   * belong to the old structures.
   */
  async reload(header: Qcow2Header): Promise<void> {
    if (this.isDirty || this.hasPendingFrees) {
      throw new BlockError('EIO', `qcow2 image '${this.path}': refcounts cannot be reloaded with changes not written`, { op: 'check', path: this.path });
    }
    const loaded = await readTable(this.file, header, this.path);
    this.table.length = 0;
    for (const offset of loaded.table) this.table.push(offset);
    this.unusable = loaded.unusable;
    this.tableOffset = header.refcountTableOffset;
    this.tableClusters = header.refcountTableClusters;
    this.sharedBlock = findSharedBlock(this.table);
    this.cache.clear();
    this.freeHint = 0;
    // Whoever caches where the refcount structures lie (the overlap guards) looks again.
    this.version++;
  }


  /** The refcount of host cluster `index` (cluster number, not byte offset). */
  async get(index: number): Promise<number> {
    const blockOffset = await this.block(Math.floor(index / this.perBlock));
    if (blockOffset === 0) return 0;
    return this.cache.use(blockOffset, (block) => readEntry(block, index % this.perBlock, this.bits));
  }

  /** Sets the refcount of cluster `index`, creating its refcount block when there is none. */
  private async set(index: number, value: number): Promise<void> {
    if (value < 0 || value >= 2 ** this.bits) {
      throw new BlockError('E_CORRUPT', `qcow2 image '${this.path}': refcount of cluster ${index} would become ${value}`, { op: 'write', path: this.path });
    }
    const tableIndex = Math.floor(index / this.perBlock);
    let blockOffset = await this.block(tableIndex);
    if (blockOffset === 0) blockOffset = await this.newBlock(tableIndex, index);
    writeEntry(await this.cache.modify(blockOffset), index % this.perBlock, this.bits, value);
  }

  /**
   * A refcount block for table entry `tableIndex`, placed on cluster `at` (which it covers, so it
   * counts itself, as QEMU's blocks do). The table grows first when it is too short.
   */
  private async newBlock(tableIndex: number, at: number): Promise<number> {
    // Cluster 0 is the header: a refcount table that says otherwise is corrupt, and a block at
    // offset 0 would read back as "no block" and make allocation loop forever.
    if (at === 0) {
      throw new BlockError('E_CORRUPT', `qcow2 image '${this.path}' is corrupt: preventing invalid allocation of a refcount block at offset 0`, { op: 'write', path: this.path });
    }
    if (tableIndex >= this.table.length) await this.growTable(tableIndex + 1);
    const offset = at * this.clusterSize;
    writeEntry(this.cache.create(offset), at % this.perBlock, this.bits, 1);
    this.table[tableIndex] = offset;
    this.dirtyTable.add(tableIndex);
    this.version++;
    return offset;
  }

  /**
   * `count` contiguous free clusters with refcount 1; returns the host offset of the first.
   * Clusters past the end of the file are free.
   */
  async allocate(count: number): Promise<number> {
    if (this.sharedBlock) {
      throw new BlockError('E_CORRUPT', `qcow2 image '${this.path}' is corrupt: ${this.sharedBlock}; refusing to allocate`, { op: 'write', path: this.path });
    }
    for (;;) {
      const start = await this.freeRun(count);
      // A missing refcount block takes the first candidate cluster; then search again.
      const missing = await this.firstMissingBlock(start, count);
      if (missing !== undefined) {
        await this.newBlock(missing.tableIndex, missing.at);
        continue;
      }
      for (let i = start; i < start + count; i++) await this.set(i, 1);
      // Past the run, as QEMU's free_cluster_index moves past every cluster its search looked
      // at: moving only when the run started at the hint left a used cluster under it, and every
      // later allocation scanned again from there (most of the time of one-write-per-cluster
      // workloads). Free clusters skipped here (runs too short) come back when a free lowers it.
      this.freeHint = start + count;
      return start * this.clusterSize;
    }
  }

  /**
   * The first cluster of `count` free ones from `freeHint` on. One await per refcount block, the
   * entries scanned in a tight loop: a file full of used clusters costs a pass over its blocks,
   * not a promise per cluster.
   */
  private async freeRun(count: number): Promise<number> {
    let start = this.freeHint;
    let run = 0;
    for (let i = start; run < count;) {
      const ti = Math.floor(i / this.perBlock);
      const end = (ti + 1) * this.perBlock;
      const offset = await this.block(ti);
      if (offset === 0) {
        // No block: every cluster it would cover is free.
        const take = Math.min(count - run, end - i);
        run += take;
        i += take;
        continue;
      }
      await this.cache.use(offset, (block) => {
        for (; i < end && run < count; i++) {
          if (readEntry(block, i % this.perBlock, this.bits) === 0) run++;
          else [run, start] = [0, i + 1];
        }
      });
    }
    return start;
  }

  /**
   * The refcount block of table entry `ti` (0: none), or, for an entry that cannot be followed,
   * the corruption signalled (QEMU's qcow2_get_refcount and alloc_refcount_block do the same).
   */
  private async block(ti: number): Promise<number> {
    const problem = this.unusable.get(ti);
    if (problem !== undefined) throw await this.signal(problem);
    return this.table[ti] ?? 0;
  }

  private async firstMissingBlock(start: number, count: number): Promise<{ tableIndex: number; at: number } | undefined> {
    for (let ti = Math.floor(start / this.perBlock); ti <= Math.floor((start + count - 1) / this.perBlock); ti++) {
      if ((this.table[ti] ?? 0) === 0) return { tableIndex: ti, at: Math.max(start, ti * this.perBlock) };
    }
    return undefined;
  }

  /** Sets a refcount outright (repairs); written with the next writeBack. */
  async setCount(index: number, value: number): Promise<void> {
    await this.set(index, value);
  }

  /** Adds `delta` (±) to a cluster's refcount now: for references gained (snapshots, COW). */
  async add(index: number, delta: number): Promise<void> {
    await this.set(index, (await this.get(index)) + delta);
  }

  /** Drops one reference from each of `count` clusters from `offset`, at the next flush. */
  free(offset: number, count: number): void {
    const first = Math.floor(offset / this.clusterSize);
    for (let i = 0; i < count; i++) this.pendingFrees.push(first + i);
  }

  /** Where the refcount table lives now: [offset, offset + clusters * clusterSize). */
  get tableRange(): { offset: number; clusters: number } {
    return { offset: this.tableOffset, clusters: this.tableClusters };
  }

  get hasPendingFrees(): boolean {
    return this.pendingFrees.length > 0;
  }

  get isDirty(): boolean {
    return this.cache.dirtyCount > 0 || this.dirtyTable.size > 0;
  }

  /**
   * Writes changed refcount blocks, then (after a flush, so no entry points at an unwritten
   * block) changed table entries. Returns whether anything was written.
   */
  async writeBack(): Promise<boolean> {
    if (!this.isDirty) return false;
    await this.writeBlocks();
    if (this.dirtyTable.size > 0) {
      await this.file.flush();
      const entry = new Uint8Array(8);
      for (const ti of [...this.dirtyTable].sort((a, b) => a - b)) {
        new DataView(entry.buffer).setBigUint64(0, BigInt(this.table[ti]!));
        await this.file.write(this.tableOffset + ti * 8, entry);
      }
      this.dirtyTable.clear();
    }
    return true;
  }

  /**
   * Applies the pending frees (the references are gone on disk by now), writes them, and
   * returns the host ranges that became free so the caller can discard them.
   */
  async applyFrees(): Promise<number[]> {
    const freed: number[] = [];
    const frees = this.pendingFrees;
    this.pendingFrees = [];
    if (frees.length > 0) this.freesApplied++;
    for (const index of frees) {
      const current = await this.get(index);
      // Already free: the reference was corrupt (check will report it); never create refcount
      // blocks for it, which a hostile L2 entry far past the end of the file would demand.
      if (current === 0) continue;
      const value = current - 1;
      await this.set(index, value);
      if (value === 0) {
        freed.push(index);
        if (index < this.freeHint) this.freeHint = index;
      }
    }
    await this.writeBack();
    return freed;
  }

  /**
   * Moves the refcount table to a larger place at the end of the used clusters, with the
   * refcount blocks that place needs, and points the header at it. Rare: a 64 KiB-cluster
   * image needs it past 16 TiB, a 512-byte one with 64-bit refcounts past 2 MiB.
   */
  private async growTable(minEntries: number): Promise<void> {
    const entriesPerCluster = this.clusterSize / 8;
    let end = Math.ceil(this.file.size / this.clusterSize);
    // Unusable entries (past 2^53) name nothing in the file; allocation never gets past them.
    for (const off of this.table) if (off && off <= Number.MAX_SAFE_INTEGER) end = Math.max(end, Math.floor(off / this.clusterSize) + 1);
    for (const [off] of this.cache.dirty()) end = Math.max(end, off / this.clusterSize + 1);
    let entries = Math.max(minEntries, Math.ceil(this.table.length * 1.5));
    let tableClusters = 0;
    let blocks: number[] = [];
    // Place new blocks at `end`, the table after them; repeat until the table covers it all.
    for (;;) {
      tableClusters = Math.ceil(entries / entriesPerCluster);
      blocks = [];
      const last = end + tableClusters + Math.ceil((tableClusters + 2) / this.perBlock) + 1;
      for (let ti = Math.floor(end / this.perBlock); ti <= Math.floor(last / this.perBlock); ti++) {
        if ((this.table[ti] ?? 0) === 0) blocks.push(ti);
      }
      const needed = Math.max(...blocks.map((b) => b + 1), Math.floor((end + blocks.length + tableClusters) / this.perBlock) + 1);
      if (needed <= entries) break;
      entries = needed;
    }
    entries = tableClusters * entriesPerCluster;
    const table = [...this.table, ...new Array<number>(entries - this.table.length).fill(0)];
    const oldOffset = this.tableOffset;
    const oldClusters = Math.ceil((this.table.length * 8) / this.clusterSize);
    blocks.forEach((ti, k) => {
      const offset = (end + k) * this.clusterSize;
      table[ti] = offset;
      this.cache.create(offset);
    });
    this.table.splice(0, this.table.length, ...table);
    const tableStart = end + blocks.length;
    for (let i = end; i < tableStart + tableClusters; i++) await this.set(i, 1);
    // Blocks first, then the new table, then the header that makes it live.
    await this.writeBlocks();
    const raw = new Uint8Array(tableClusters * this.clusterSize);
    const dv = new DataView(raw.buffer);
    table.forEach((off, i) => dv.setBigUint64(i * 8, BigInt(off)));
    await this.file.write(tableStart * this.clusterSize, raw);
    await this.file.flush();
    const header = new Uint8Array(12);
    const hv = new DataView(header.buffer);
    hv.setBigUint64(0, BigInt(tableStart * this.clusterSize));
    hv.setUint32(8, tableClusters);
    await this.file.write(48, header);
    await this.file.flush();
    this.tableOffset = tableStart * this.clusterSize;
    this.tableClusters = tableClusters;
    this.version++;
    this.dirtyTable.clear();
    this.free(oldOffset, oldClusters);
  }

  /** Writes the changed refcount blocks; the cache may evict them again afterwards. */
  private async writeBlocks(): Promise<void> {
    for (const [offset, block] of this.cache.dirty()) {
      await this.file.write(offset, block);
      this.cache.markClean(offset);
    }
    this.cache.trim();
  }

  /** Drops cached blocks nobody used since the last call (cache-clean-interval); returns how many. */
  cleanUnused(): number {
    return this.cache.cleanUnused();
  }
}

type Signal = (what: string) => Promise<BlockError>;

interface RefcountTable {
  table: number[];
  unusable: Map<number, string>;
}

/** C's %#x: "0" for zero, else 0x and lowercase hex (QEMU's messages print indexes so). */
const altHex = (n: number | bigint) => (n === 0 || n === 0n ? '0' : `0x${n.toString(16)}`);

/**
 * The refcount table the header names. Entries are kept as QEMU keeps them: reserved bits are
 * dropped (QEMU masks them off at every use), and a misaligned block offset is held, to be
 * refused when something needs that block, since check must still see the image.
 */
async function readTable(file: BlockNode, header: Qcow2Header, path: string): Promise<RefcountTable> {
  const clusterSize = 2 ** header.clusterBits;
  const bytes = header.refcountTableClusters * clusterSize;
  if (header.refcountTableOffset + bytes > file.size) {
    throw new BlockError('E_CORRUPT', `qcow2 image '${path}' is corrupt: the refcount table lies past the end of the file`, { op: 'open', path });
  }
  const raw = new Uint8Array(bytes);
  await file.read(header.refcountTableOffset, raw);
  const dv = new DataView(raw.buffer);
  const table: number[] = [];
  const unusable = new Map<number, string>();
  for (let i = 0; i < bytes / 8; i++) {
    const e = dv.getBigUint64(i * 8) & REFT_OFFSET_MASK;
    if (e > BigInt(Number.MAX_SAFE_INTEGER)) {
      unusable.set(i, `Refblock offset ${altHex(e)} lies beyond the end of any file (reftable index: ${altHex(i)})`);
    } else if (Number(e) % clusterSize !== 0) {
      unusable.set(i, `Refblock offset ${altHex(e)} unaligned (reftable index: ${altHex(i)})`);
    }
    table.push(Number(e));
  }
  return { table, unusable };
}

/**
 * Two table entries naming one refcount block, described, if the table has them. Reads are
 * fine, but every count in that block would stand for two ranges of clusters.
 */
function findSharedBlock(table: readonly number[]): string | undefined {
  const seen = new Map<number, number>();
  for (const [i, off] of table.entries()) {
    const first = seen.get(off);
    if (off && first !== undefined) return `refcount table entries ${first} and ${i} both name the refcount block at 0x${off.toString(16)}`;
    seen.set(off, i);
  }
  return undefined;
}

/**
 * Loads an image's refcount structures on first use: reads that never allocate, check or look
 * for preallocation never read them. Concurrent first users share one load.
 */
export class RefcountLoader {
  private loading: Promise<Refcounts> | undefined;
  private loaded: Refcounts | undefined;

  constructor(
    private readonly file: BlockNode,
    private readonly header: Qcow2Header,
    private readonly path: string,
    private readonly cacheBytes: number,
    private readonly signal: Signal,
  ) {}

  get(): Promise<Refcounts> {
    if (this.loaded) return Promise.resolve(this.loaded);
    this.loading ??= Refcounts.load(this.file, this.header, this.path, this.cacheBytes, this.signal).then(
      (r) => (this.loaded = r),
      (err: unknown) => {
        this.loading = undefined;
        throw err;
      },
    );
    return this.loading;
  }

  /**
   * The refcount structures moved (a check rebuilt them and switched the header): loaded ones
   * read the new table; unloaded ones will when first used.
   */
  async reload(): Promise<void> {
    const loaded = this.loaded ?? (await this.loading?.catch(() => undefined));
    await loaded?.reload(this.header);
  }

  /**
   * The refcount structures were replaced by ones of another width (amend refcount_bits): the
   * next get() reads them anew from the header. Nothing of the old ones may be unwritten.
   */
  forget(): void {
    this.loaded = undefined;
    this.loading = undefined;
  }

  /** The refcounts if something has loaded them (only then can they hold unwritten changes). */
  get current(): Refcounts | undefined {
    return this.loaded;
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

export function writeEntry(block: Uint8Array, i: number, bits: number, value: number): void {
  switch (bits) {
    case 8: block[i] = value; return;
    case 16: block[i * 2] = value >>> 8; block[i * 2 + 1] = value & 0xff; return;
    case 32: new DataView(block.buffer, block.byteOffset).setUint32(i * 4, value); return;
    case 64: new DataView(block.buffer, block.byteOffset).setBigUint64(i * 8, BigInt(value)); return;
    default: {
      const perByte = 8 / bits;
      const shift = (i % perByte) * bits;
      const at = Math.floor(i / perByte);
      block[at] = (block[at]! & ~(((1 << bits) - 1) << shift)) | (value << shift);
    }
  }
}
