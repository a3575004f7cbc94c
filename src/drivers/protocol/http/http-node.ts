import { BlockNode, type NodeOptions } from '../../../core/block-node.js';
import { alignUp, defaultLimits } from '../../../core/limits.js';
import type { Extent, IoOptions } from '../../../core/types.js';
import type { HttpOptions } from './options.js';
import { ReadaheadCache } from './readahead.js';
import { readHead, readRange } from './replies.js';
import { Transport } from './transport.js';

const SECTOR = 512;
/** The most one GET asks for. */
const MAX_REPLY = 4 * 1024 * 1024;

export interface HttpNodeOptions extends NodeOptions {
  /** Seconds each request may take (connect, headers, body); 0: no limit. */
  timeout: number;
}

/**
 * A file on an HTTP(S) server as a read-only protocol node (QEMU's curl driver for http and
 * https): the size comes from a HEAD, the bytes from `Range: bytes=` GETs over keep-alive
 * connections, several in flight, through a readahead cache. Writes are refused as for any
 * read-only node; block status says "data" everywhere, as QEMU's does, so a copy reads it all
 * and finds the zeros by scanning.
 */
export class HttpNode extends BlockNode {
  readonly driver: 'http' | 'https';
  private readonly name: string;
  private readonly transport: Transport;
  /** The file's real length; the node's size is rounded up to whole sectors, as QEMU's is. */
  private readonly fileLength: number;
  private readonly cache: ReadaheadCache;

  private constructor(opts: HttpOptions & HttpNodeOptions, transport: Transport, fileLength: number) {
    super({ ...opts, readOnly: true });
    this.driver = opts.url.protocol === 'https:' ? 'https' : 'http';
    this.name = opts.text;
    this.transport = transport;
    this.fileLength = fileLength;
    // QEMU counts every image in whole sectors; the tail past the file reads as zeros.
    this.size = alignUp(fileLength, SECTOR);
    // The timeout covers a whole reply, so a read must stay small enough to arrive within it on
    // a slow link: the generic layer splits larger ones (only a readahead set larger asks more).
    this.limits = defaultLimits({ maxTransfer: MAX_REPLY });
    this.cache = new ReadaheadCache((offset, into) => this.fetch(offset, into), opts.readahead, fileLength);
  }

  static async open(opts: HttpOptions & HttpNodeOptions): Promise<HttpNode> {
    const transport = new Transport(opts.url, { sslverify: opts.sslverify, cookie: opts.cookie, auth: opts.auth, timeoutMs: opts.timeout * 1000 });
    const ctx = { op: 'open', path: opts.text };
    try {
      const { length } = await transport.request({ method: 'HEAD', ctx, consume: (res) => readHead(res, ctx) });
      return new HttpNode(opts, transport, length);
    } catch (err) {
      transport.close();
      throw err;
    }
  }

  override get filename(): string {
    return this.name;
  }

  /** QEMU's curl driver has no bdrv_get_info (qemu-img info of raw over http shows no dirty flag). */
  override hasDriverInfo(): boolean {
    return false;
  }

  /** A server does not say how much it stores ("disk size: unavailable"). */
  override async allocatedSize(): Promise<number | undefined> {
    return undefined;
  }

  protected async _read(offset: number, into: Uint8Array, _opts: IoOptions): Promise<void> {
    const inFile = Math.max(0, Math.min(into.byteLength, this.fileLength - offset));
    if (inFile > 0) await this.cache.read(offset, into.subarray(0, inFile));
    if (inFile < into.byteLength) into.fill(0, inFile);
  }

  /** All data, at host offset = guest offset in the URL, as QEMU reports a protocol without block status. */
  protected override async _blockStatus(offset: number, maxLength: number, _opts: IoOptions): Promise<Extent> {
    return { offset, length: maxLength, data: true, zero: false, present: true, depth: 0, hostOffset: offset, hostFile: this.name };
  }

  protected override async _close(): Promise<void> {
    this.cache.clear();
    this.transport.close();
  }

  private fetch(offset: number, into: Uint8Array): Promise<void> {
    const ctx = { ...this.ctx('read', offset, into.byteLength), path: this.name };
    return this.transport.request({
      method: 'GET',
      headers: { range: `bytes=${offset}-${offset + into.byteLength - 1}` },
      ctx,
      consume: (res) => readRange(res, offset, into, this.fileLength, ctx),
    });
  }
}
