/**
 * Helpers for NBD server tests: a server on a Unix socket in a temp dir, and a raw-socket client
 * that speaks the protocol byte by byte, so tests can also send what no real client would.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { lstat } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { afterEach } from 'node:test';
import type { BlockNode } from '../../src/core/block-node.js';
import { NbdExport, NbdServer, type ExportOptions, type NbdServerOptions } from '../../src/nbd/server/index.js';
import {
  encodeInfoRequest, encodeOptionHeader, encodeRequestHeader, IHAVEOPT, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_GO, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NBD_REP_MAGIC, NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC, NBDMAGIC, REQUEST_HEADER_SIZE,
} from '../../src/nbd/protocol.js';
import { makeTmpDir, type TmpDir } from './tmp.js';

export interface TestServer {
  server: NbdServer;
  socketPath: string;
  /** Graceful close of the server, then its nodes, then the temp dir. */
  close(): Promise<void>;
}

let serial = 0;

/** Serves `exports` (node plus export options) on a fresh Unix socket. */
export async function startServer(exports: { node: BlockNode; opts?: ExportOptions }[], opts: Omit<NbdServerOptions, 'exports'> = {}): Promise<TestServer> {
  const tmp: TmpDir = await makeTmpDir('vdisk-nbd-');
  const server = new NbdServer({ ...opts, exports: exports.map((e) => new NbdExport(e.node, e.opts)) });
  const socketPath = tmp.path(`s${++serial}.sock`);
  await server.listen({ path: socketPath });
  return {
    server,
    socketPath,
    async close() {
      await server.close();
      for (const e of exports) await e.node.close();
      await tmp.cleanup();
    },
  };
}

/** A test file's server and clients, all closed after each test (call at the top level of the file). */
export class ServerFixture {
  private current: TestServer | undefined;
  private readonly clients: RawClient[] = [];

  constructor() {
    afterEach(async () => {
      for (const c of this.clients.splice(0)) c.close();
      await this.current?.close();
      this.current = undefined;
    });
  }

  async start(...args: Parameters<typeof startServer>): Promise<TestServer> {
    this.current = await startServer(...args);
    return this.current;
  }

  get server(): NbdServer {
    return this.current!.server;
  }

  get socketPath(): string {
    return this.current!.socketPath;
  }

  /** A raw client on the current server, closed after the test. */
  async client(): Promise<RawClient> {
    const c = await RawClient.connect(this.socketPath);
    this.clients.push(c);
    return c;
  }
}

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

/** A request as tests write it: 64-bit fields as bigints, so any value the wire can carry is sent. */
export interface TestRequest {
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
}

/** The protocol's request encoder, fed from bigints. */
export function encodeTestRequest(r: TestRequest): Buffer {
  const [cookieHigh, cookieLow, offsetHigh, offsetLow] = [r.cookie >> 32n, r.cookie, r.offset >> 32n, r.offset].map((v) => Number(v & 0xffffffffn));
  return encodeRequestHeader(Buffer.alloc(REQUEST_HEADER_SIZE), 0,
    { flags: r.flags, type: r.type, cookieHigh: cookieHigh!, cookieLow: cookieLow!, offsetHigh: offsetHigh!, offsetLow: offsetLow!, length: r.length });
}

/** A reply as received: simple (error, cookie) or one structured chunk. */
export type Reply = { simple: true; error: number; cookie: bigint } | ({ simple: false } & Chunk);

/** A client on a raw socket: every byte is the test's to choose. */
export class RawClient {
  private buffered = Buffer.alloc(0);
  private waiting: (() => void) | undefined;
  private ended = false;
  socket: net.Socket;
  private readonly onData = (d: Buffer) => {
    this.buffered = Buffer.concat([this.buffered, d]);
    this.waiting?.();
  };
  private readonly onEnd = () => {
    this.ended = true;
    this.waiting?.();
  };

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.listen(socket);
  }

  private listen(socket: net.Socket): void {
    socket.on('data', this.onData).on('end', this.onEnd).on('close', this.onEnd).on('error', this.onEnd);
  }

  /** After the server's ACK to STARTTLS: the TLS handshake on the same socket (rejects when refused). */
  async startTls(options: tls.ConnectionOptions): Promise<void> {
    const raw = this.socket;
    raw.off('data', this.onData).off('end', this.onEnd).off('close', this.onEnd).off('error', this.onEnd);
    const secure = tls.connect({ ...options, socket: raw });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.socket = secure;
    this.listen(secure);
  }

  static connect(socketPath: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(socketPath, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  write(data: Uint8Array): void {
    this.socket.write(data);
  }

  /** Exactly n bytes; rejects when the server closes first. */
  async read(n: number): Promise<Buffer> {
    while (this.buffered.length < n) {
      if (this.ended) throw new Error(`server closed the connection (wanted ${n} bytes, had ${this.buffered.length})`);
      await new Promise<void>((resolve) => (this.waiting = resolve));
      this.waiting = undefined;
    }
    const out = this.buffered.subarray(0, n);
    this.buffered = this.buffered.subarray(n);
    return out;
  }

  /** Resolves true when the server closes the connection (after reading anything it still sends). */
  async closedByServer(): Promise<boolean> {
    while (!this.ended) {
      await new Promise<void>((resolve) => (this.waiting = resolve));
      this.waiting = undefined;
    }
    return true;
  }

  close(): void {
    this.socket.destroy();
  }

  // ---- handshake ----------------------------------------------------------------------------

  /** Reads the 18-byte greeting and sends the client flags. */
  async greet(flags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES): Promise<number> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(flags, 0);
    this.write(f);
    return g.readUInt16BE(16);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), length = data.length): void {
    this.write(Buffer.concat([encodeOptionHeader(option, length), data]));
  }

  async optionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== NBD_REP_MAGIC) throw new Error(`bad option reply magic ${h.toString('hex')}`);
    const length = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(length) };
  }

  /** Replies up to and including the final one (ACK or an error). */
  async optionReplies(): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.type === NBD_REP_ACK || r.type >= 0x80000000) return out;
    }
  }

  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    return this.optionReplies();
  }

  /** Structured replies, base:allocation (and more contexts), GO: the libnbd sequence. */
  async negotiate(name = '', opts: { structured?: boolean; contexts?: string[] } = {}): Promise<OptionReply[]> {
    await this.greet();
    if (opts.structured ?? true) await this.option(NBD_OPT_STRUCTURED_REPLY);
    if (opts.contexts?.length) await this.option(NBD_OPT_SET_META_CONTEXT, metaRequest(name, opts.contexts));
    const replies = await this.option(NBD_OPT_GO, infoRequest(name));
    if (replies[replies.length - 1]!.type !== NBD_REP_ACK) throw new Error(`GO failed: ${replies.map((r) => r.data.toString()).join()}`);
    return replies;
  }

  // ---- transmission -------------------------------------------------------------------------

  request(r: Partial<TestRequest> & { type: number }, payload?: Uint8Array): void {
    const header = encodeTestRequest({ flags: 0, cookie: 1n, offset: 0n, length: payload?.byteLength ?? 0, ...r });
    this.write(payload ? Buffer.concat([header, payload]) : header);
  }

  /** One simple reply or one structured chunk. For a simple READ reply, read the data after it. */
  async reply(): Promise<Reply> {
    const h = await this.read(4);
    const magic = h.readUInt32BE(0);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) {
      const rest = await this.read(12);
      return { simple: true, error: rest.readUInt32BE(0), cookie: rest.readBigUInt64BE(4) };
    }
    if (magic !== NBD_STRUCTURED_REPLY_MAGIC) throw new Error(`bad reply magic 0x${magic.toString(16)}`);
    const rest = await this.read(16);
    const length = rest.readUInt32BE(12);
    return { simple: false, flags: rest.readUInt16BE(0), type: rest.readUInt16BE(2), cookie: rest.readBigUInt64BE(4), payload: await this.read(length) };
  }

  /** Every chunk of one structured reply, up to the one flagged DONE. */
  async chunks(): Promise<Chunk[]> {
    const out: Chunk[] = [];
    for (;;) {
      const r = await this.reply();
      if (r.simple) throw new Error('expected a structured reply');
      out.push(r);
      if (r.flags & 1) return out;
    }
  }
}

/** NBD_OPT_INFO/GO data: name, then the requested info types (the client's encoder). */
export function infoRequest(name: string, infos: number[] = []): Buffer {
  return encodeInfoRequest(name, infos);
}

/** LIST/SET_META_CONTEXT data: name, then the queries. */
export function metaRequest(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v, 0);
    return b;
  };
  const n = Buffer.from(name);
  parts.push(u32(n.length), n, u32(queries.length));
  for (const q of queries) {
    const qb = Buffer.from(q);
    parts.push(u32(qb.length), qb);
  }
  return Buffer.concat(parts);
}

/** Fields of an NBD_INFO_EXPORT reply. */
export function exportInfo(replies: OptionReply[]): { size: bigint; flags: number } | undefined {
  const r = replies.find((x) => x.type === 3 && x.data.length === 12 && x.data.readUInt16BE(0) === 0);
  return r && { size: r.data.readBigUInt64BE(2), flags: r.data.readUInt16BE(10) };
}

// ---- `vdisk serve` as a separate process ---------------------------------------------------------

const REPO = new URL('../../', import.meta.url).pathname;

export interface ServeProcess {
  child: ChildProcess;
  /** Settles when the process exits, with its status and what it wrote. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
  /** SIGTERM (graceful stop) and the exit. */
  stop(): Promise<{ code: number | null; stderr: string }>;
}

/** The command line that runs the CLI from source, for tools that start the server themselves. */
export function serveCommand(args: readonly string[]): string[] {
  return [process.execPath, '--import', 'tsx', `${REPO}src/cli/dev.ts`, 'serve', ...args];
}

/** Starts `vdisk serve ARGS` from source (the server of the interop tests). */
export function spawnServe(args: readonly string[], env: NodeJS.ProcessEnv = process.env): ServeProcess {
  const [cmd, ...rest] = serveCommand(args);
  const child = spawn(cmd!, rest, { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return {
    child,
    exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/**
 * Waits until the server listens, or its process exits (then throws with its stderr). A Unix
 * socket is watched for its file, without connecting: a server without -t exits when its last
 * client leaves, and a probe would be that client. A TCP port can only be probed by connecting,
 * so use it with -t. Polls; nothing is timed.
 */
export async function waitForListener(where: { path: string } | { port: number; host?: string }, proc?: ServeProcess): Promise<void> {
  let exited: { stderr: string; code: number | null } | undefined;
  void proc?.exited.then((e) => (exited = e));
  for (;;) {
    if (exited) throw new Error(`vdisk serve exited with ${exited.code} before listening: ${exited.stderr.trim()}`);
    const ok = 'path' in where
      ? await lstat(where.path).then((st) => st.isSocket(), () => false)
      : await new Promise<boolean>((resolve) => {
        const s = net.connect(where.port, where.host ?? '127.0.0.1');
        s.once('connect', () => (s.destroy(), resolve(true)));
        s.once('error', () => resolve(false));
      });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `vdisk serve -t -k DIR/sN.sock ARGS…`, listening: its nbd+unix URI for the export `name`. */
export async function serveOnSocket(dir: string, args: readonly string[], name = ''): Promise<{ uri: string; socket: string; proc: ServeProcess }> {
  const socket = path.join(dir, `vdisk-${++serial}.sock`);
  const proc = spawnServe(['-t', '-k', socket, ...args]);
  await waitForListener({ path: socket }, proc);
  return { uri: `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`, socket, proc };
}
