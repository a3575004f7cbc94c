import type { BlockNode } from '../../../core/block-node.js';
import type { BlockError } from '../../../core/errors.js';
import { decompressCluster, type CompressionType } from './compression.js';
import type { CompressedRange } from './l2-entry.js';

/**
 * Reads guest bytes of compressed clusters. A guest reading a compressed cluster 4 KiB at a time
 * would decompress it sixteen times over; the last cluster decompressed is kept, so it happens once.
 */
export class CompressedReader {
  private last: { offset: number; data: Promise<Uint8Array> } | undefined;

  constructor(
    private readonly file: BlockNode,
    private readonly compression: CompressionType,
    private readonly clusterSize: number,
    private readonly corruption: (what: string) => BlockError,
  ) {}

  /** Drops the cached cluster: compressed bytes were written, perhaps where freed ones lay. */
  forget(): void {
    this.last = undefined;
  }

  /** Fills `dst` with the guest bytes at `pos`, whose cluster is compressed at `range`. */
  async read(range: CompressedRange, pos: number, dst: Uint8Array): Promise<void> {
    const file = this.file;
    if (range.offset > Number.MAX_SAFE_INTEGER || range.offset >= file.size) {
      throw this.corruption(`compressed cluster at guest offset ${pos} points past the end of the file`);
    }
    if (this.last?.offset !== range.offset) {
      const data = (async () => {
        const input = new Uint8Array(Math.min(range.length, file.size - range.offset));
        await file.read(range.offset, input);
        return decompressCluster(this.compression, input, this.clusterSize);
      })();
      this.last = { offset: range.offset, data };
      data.catch(() => {
        if (this.last?.data === data) this.last = undefined;
      });
    }
    const cluster = await this.last.data;
    const inCluster = pos % this.clusterSize;
    dst.set(cluster.subarray(inCluster, inCluster + dst.byteLength));
  }
}
