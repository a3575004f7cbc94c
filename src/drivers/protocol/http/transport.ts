import http from 'node:http';
import https from 'node:https';
import { BlockError, fromSystemError, type BlockErrorContext } from '../../../core/errors.js';
import { trustedCAs } from './ca.js';

/** Requests in flight at once, and keep-alive connections kept: QEMU's curl uses 8 handles (CURL_NUM_STATES). */
export const MAX_IN_FLIGHT = 8;
/** Redirects followed per request; libcurl's newer default is 30, older ones had no limit. */
export const MAX_REDIRECTS = 10;

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const PERMANENT = new Set([301, 308]);
/** A keep-alive connection the server closed as a request went out: the request never ran, so it is sent once more. */
const STALE_CONNECTION = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED']);

export interface TransportOptions {
  sslverify: boolean;
  cookie?: string;
  /** `user:password` for Basic authentication. */
  auth?: string;
  /** Milliseconds one request may take from being sent to its last byte; 0: no limit. */
  timeoutMs: number;
}

/** One request: what to send, and how to read the answer (the deadline covers the reading too). */
export interface Exchange<T> {
  method: 'HEAD' | 'GET';
  headers?: Record<string, string>;
  /** For messages and error contexts. */
  ctx: BlockErrorContext;
  /** Reads the final (non-redirect) response; it must consume or destroy the body. */
  consume(res: http.IncomingMessage, url: URL): Promise<T>;
}

const CERT_ERROR = /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ERR_TLS_CERT_ALTNAME_INVALID/;

/**
 * Keep-alive connections to one server and the rules every request follows: at most
 * MAX_IN_FLIGHT at once (a request waiting for its turn is not yet on the clock), a deadline over
 * the whole exchange (as curl's CURLOPT_TIMEOUT), a bounded number of redirects to http(s) only,
 * and credentials sent to the named origin only.
 */
export class Transport {
  /** Where requests go: the URL, or where a permanent redirect moved it. */
  private target: URL;
  private readonly origin: string;
  private readonly agents = new Map<string, http.Agent>();
  private active = 0;
  private readonly queue: (() => void)[] = [];
  private closed = false;

  constructor(url: URL, private readonly opts: TransportOptions) {
    this.target = url;
    this.origin = url.origin;
  }

  async request<T>(ex: Exchange<T>): Promise<T> {
    await this.acquire();
    try {
      return await this.run(ex);
    } finally {
      this.release();
    }
  }

  /** Drops every connection; requests still waiting for a turn fail. */
  close(): void {
    this.closed = true;
    for (const agent of this.agents.values()) agent.destroy();
    this.agents.clear();
    for (const wake of this.queue.splice(0)) wake();
  }

  private async acquire(): Promise<void> {
    while (this.active >= MAX_IN_FLIGHT && !this.closed) await new Promise<void>((resolve) => this.queue.push(resolve));
    this.active++;
  }

  private release(): void {
    this.active--;
    this.queue.shift()?.();
  }

  private async run<T>(ex: Exchange<T>): Promise<T> {
    if (this.closed) throw new BlockError('ESHUTDOWN', `${this.target.href}: the node is closed`, ex.ctx);
    const seconds = this.opts.timeoutMs / 1000;
    let current: http.ClientRequest | undefined;
    let expired: BlockError | undefined;
    const timer = this.opts.timeoutMs > 0 ? setTimeout(() => {
      expired = new BlockError('ETIMEDOUT', ex.method === 'HEAD'
        ? `Could not open '${ex.ctx.path}': no answer from the server within ${seconds} s (ETIMEDOUT)`
        : `Could not read '${ex.ctx.path}': no complete reply from the server within ${seconds} s (ETIMEDOUT)`, ex.ctx);
      current?.destroy(expired);
    }, this.opts.timeoutMs) : undefined;
    try {
      let url = this.target;
      let permanent = true;
      for (let hops = 0; ; hops++) {
        if (expired) throw expired;
        const { req, res } = await this.send(ex, url, (r) => (current = r));
        if (!REDIRECTS.has(res.statusCode ?? 0) || res.headers.location === undefined) {
          if (permanent && url !== this.target) this.target = url;
          return await ex.consume(res, url);
        }
        // The body of a redirect is not wanted; dropping the connection is cheaper than reading it.
        req.destroy();
        if (hops >= MAX_REDIRECTS) throw new BlockError('EIO', `Could not open '${ex.ctx.path}': more than ${MAX_REDIRECTS} redirects`, ex.ctx);
        url = redirectTarget(url, res.headers.location, ex.ctx);
        permanent &&= PERMANENT.has(res.statusCode!);
      }
    } catch (err) {
      throw expired ?? this.failure(err, ex.ctx);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends the request and waits for the response headers; a stale keep-alive connection is retried once. */
  private async send(ex: Exchange<unknown>, url: URL, track: (req: http.ClientRequest) => void): Promise<{ req: http.ClientRequest; res: http.IncomingMessage }> {
    for (let attempt = 0; ; attempt++) {
      const req = this.client(url).request({
        method: ex.method,
        protocol: url.protocol,
        hostname: url.hostname.replace(/^\[(.*)\]$/, '$1'),
        port: url.port || undefined,
        path: url.pathname + url.search,
        agent: this.agent(url.protocol),
        headers: this.headers(ex, url),
      });
      track(req);
      try {
        return await new Promise((resolve, reject) => {
          req.once('response', (res) => resolve({ req, res }));
          req.once('error', reject);
          req.end();
        });
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? '';
        if (attempt > 0 || !req.reusedSocket || !STALE_CONNECTION.has(code)) throw err;
      }
    }
  }

  private client(url: URL): typeof http | typeof https {
    return url.protocol === 'https:' ? https : http;
  }

  private headers(ex: Exchange<unknown>, url: URL): Record<string, string> {
    // Content codings would change the bytes and their offsets: the image is wanted as stored.
    const headers: Record<string, string> = { 'accept-encoding': 'identity', ...ex.headers };
    // Credentials go to the server they were given for, not to wherever it redirects.
    if (url.origin === this.origin) {
      if (this.opts.auth !== undefined) headers.authorization = `Basic ${Buffer.from(this.opts.auth).toString('base64')}`;
      if (this.opts.cookie !== undefined) headers.cookie = this.opts.cookie;
    }
    return headers;
  }

  private agent(protocol: string): http.Agent {
    let agent = this.agents.get(protocol);
    if (!agent) {
      const common = { keepAlive: true, maxSockets: MAX_IN_FLIGHT, maxFreeSockets: MAX_IN_FLIGHT, scheduling: 'lifo' as const };
      if (protocol === 'https:') {
        const ca = this.opts.sslverify ? trustedCAs() : undefined;
        agent = new https.Agent({ ...common, rejectUnauthorized: this.opts.sslverify, ...(ca ? { ca: [...ca] } : {}) });
      } else {
        agent = new http.Agent(common);
      }
      this.agents.set(protocol, agent);
    }
    return agent;
  }

  private failure(err: unknown, ctx: BlockErrorContext): BlockError {
    if (err instanceof BlockError) return err;
    const e = err as NodeJS.ErrnoException;
    if (CERT_ERROR.test(e.code ?? '')) {
      return new BlockError('EIO', `Could not ${ctx.op} '${ctx.path}': SSL certificate problem: ${e.message} `
        + '(trust its CA with NODE_EXTRA_CA_CERTS=FILE, or open with sslverify=off)', ctx, { cause: err });
    }
    // curl's words, which QEMU passes on, rather than getaddrinfo's.
    if (e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN') {
      return new BlockError('ENOENT', `Could not ${ctx.op} '${ctx.path}': Could not resolve host: ${(e as { hostname?: string }).hostname ?? '?'}`, ctx, { cause: err });
    }
    // Node's "socket hang up" and "aborted" are connection losses: say so in errno words.
    if (e.code === 'ECONNRESET') return new BlockError('EIO', `Could not ${ctx.op} '${ctx.path}': Connection reset by peer`, ctx, { cause: err });
    return fromSystemError(err, ctx);
  }
}

function redirectTarget(from: URL, location: string, ctx: BlockErrorContext): URL {
  let next: URL;
  try {
    next = new URL(location, from);
  } catch {
    throw new BlockError('EIO', `Could not ${ctx.op} '${ctx.path}': the server redirected to an invalid URL '${location}'`, ctx);
  }
  // As QEMU's CURLOPT_REDIR_PROTOCOLS: a redirect must not lead to file:// or another protocol.
  if (next.protocol !== 'http:' && next.protocol !== 'https:') {
    throw new BlockError('EIO', `Could not ${ctx.op} '${ctx.path}': the server redirected to '${location}', which is not http or https`, ctx);
  }
  return next;
}
