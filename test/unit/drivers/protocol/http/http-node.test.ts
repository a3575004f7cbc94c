import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { describe, it } from 'node:test';
import type { BlockNode } from '../../../../../src/core/block-node.js';
import { open } from '../../../../../src/registry/index.js';
import { vdiskProcess } from '../../../cli/cli-process.js';

/*
 * Real servers on loopback that misbehave on purpose (nginx, in the interop tests, does not):
 * node:http ones for status codes and headers, raw sockets for replies no HTTP library would send.
 */

const FILE = Uint8Array.from({ length: 100_000 }, (_, i) => (i * 7) % 256);

interface Served {
  url: string;
  requests: { method: string; url: string; headers: http.IncomingHttpHeaders; socket: net.Socket }[];
  close(): Promise<void>;
}

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as net.AddressInfo).port;
}

/** An HTTP server; `handler` answers, or undefined for a well-behaved range server of FILE. */
async function serve(handler?: (req: http.IncomingMessage, res: http.ServerResponse) => void): Promise<Served> {
  const requests: Served['requests'] = [];
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method!, url: req.url!, headers: req.headers, socket: req.socket });
    (handler ?? rangeServer(FILE))(req, res);
  });
  const port = await listen(server);
  return {
    url: `http://127.0.0.1:${port}/disk.img`, requests,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

function rangeServer(file: Uint8Array) {
  return (req: http.IncomingMessage, res: http.ServerResponse) => {
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (req.method === 'HEAD' || !m) {
      res.writeHead(200, { 'content-length': file.byteLength, 'accept-ranges': 'bytes' });
      return void res.end(req.method === 'HEAD' ? undefined : file);
    }
    const [first, last] = [Number(m[1]), Math.min(Number(m[2]), file.byteLength - 1)];
    res.writeHead(206, { 'content-range': `bytes ${first}-${last}/${file.byteLength}`, 'content-length': last - first + 1 });
    res.end(file.subarray(first, last + 1));
  };
}

/** A raw TCP server: `reply(request text, socket, nth request)` writes whatever it likes. */
async function rawServer(reply: (head: string, socket: net.Socket, n: number) => void): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  let n = 0;
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      let end;
      while ((end = buf.indexOf('\r\n\r\n')) >= 0) {
        const head = buf.slice(0, end);
        buf = buf.slice(end + 4);
        reply(head, s, n++);
      }
    });
  });
  const port = await listen(server);
  return {
    url: `http://127.0.0.1:${port}/disk.img`,
    close: () => new Promise((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }),
  };
}

const HEAD_OK = (length: number) => `HTTP/1.1 200 OK\r\nContent-Length: ${length}\r\nAccept-Ranges: bytes\r\n\r\n`;

function openUrl(url: string, extra: Record<string, unknown> = {}, networkTimeout?: number): Promise<BlockNode> {
  return open({ driver: 'http', url, ...extra }, { networkTimeout });
}

async function readErr(node: BlockNode, offset: number, length: number): Promise<Error & { code?: string }> {
  try {
    await node.read(offset, new Uint8Array(length));
  } catch (err) {
    return err as Error & { code?: string };
  } finally {
    await node.close();
  }
  throw new Error('the read succeeded');
}

describe('http driver against misbehaving servers', () => {
  it('reads what a well-behaved range server holds; the size is whole sectors and the tail reads as zeros', async () => {
    const srv = await serve();
    try {
      const node = await openUrl(srv.url);
      assert.deepEqual([node.size, node.readOnly, node.driver, node.filename], [100_352, true, 'http', srv.url]);
      const buf = new Uint8Array(852);
      await node.read(99_500, buf);
      assert.deepEqual(buf.subarray(0, 500), FILE.subarray(99_500));
      assert.ok(buf.subarray(500).every((b) => b === 0));
      await node.close();
      for (const r of srv.requests.filter((q) => q.method === 'GET')) {
        const [, , last] = /^bytes=(\d+)-(\d+)$/.exec(r.headers.range!)!.map(Number);
        assert.ok(last! < FILE.byteLength, `never asks past the file: ${r.headers.range}`);
      }
    } finally {
      await srv.close();
    }
  });

  it('refuses writes, zero writes and discards as any read-only node does', async () => {
    const srv = await serve();
    try {
      const node = await openUrl(srv.url);
      await assert.rejects(node.write(0, new Uint8Array(512)), { code: 'EROFS' });
      await assert.rejects(node.writeZeroes(0, 512), { code: 'EROFS' });
      await assert.rejects(node.discard(0, 512), { code: 'EROFS' });
      assert.equal(node.caps.writable, false);
      await node.close();
    } finally {
      await srv.close();
    }
  });

  it('a server that announces ranges and then sends the whole file with 200: EIO, and the body is not read', async () => {
    let finished = false;
    const big = new Uint8Array(64 << 20);
    const srv = await serve((req, res) => {
      res.writeHead(200, { 'content-length': big.byteLength, 'accept-ranges': 'bytes' });
      if (req.method === 'HEAD') return void res.end();
      res.on('finish', () => (finished = true));
      res.end(big);
    });
    try {
      const err = await readErr(await openUrl(srv.url), 4096, 4096);
      assert.equal(err.code, 'EIO');
      assert.equal(err.message, `Could not read '${srv.url}': the server ignored the byte range (HTTP 200 instead of 206 Partial Content)`);
      assert.equal(finished, false, 'the 64 MiB reply was cut off');
    } finally {
      await srv.close();
    }
  });

  const wrongReplies: [string, string, RegExp][] = [
    ['another range', 'HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/100000\r\nContent-Length: 10\r\n\r\n0123456789',
      /the server sent bytes 0-9 for a request of bytes 65536-327679$/],
    ['no Content-Range', 'HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\r\n0123456789', /the reply's Content-Range null is not one byte range$/],
    ['a multipart reply', 'HTTP/1.1 206 Partial Content\r\nContent-Type: multipart/byteranges; boundary=x\r\nContent-Length: 10\r\n\r\n0123456789',
      /Content-Range null is not one byte range/],
    ['a changed size', 'HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 65536-327679/999999\r\n\r\n', /the file changed size on the server \(999999 bytes, 1000000 when opened\)$/],
    ['a wrong Content-Length', 'HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 65536-327679/1000000\r\nContent-Length: 5\r\n\r\nabcde',
      /the reply's Content-Length 5 does not match the 262144 bytes asked for$/],
    ['more bytes than asked for', `HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 65536-327679/1000000\r\nConnection: close\r\n\r\n${'x'.repeat(300_000)}`,
      /the server sent more than the 262144 bytes asked for at offset 65536$/],
    ['fewer bytes than asked for', 'HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 65536-327679/1000000\r\nConnection: close\r\n\r\nshort',
      /the reply ended after 5 of 262144 bytes at offset 65536$/],
    ['a compressed body', 'HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 65536-327679/1000000\r\nContent-Encoding: gzip\r\n\r\n',
      /the reply has Content-Encoding 'gzip'$/],
    ['a server error', 'HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n', /The requested URL returned error: 503 Service Unavailable$/],
  ];
  for (const [what, reply, re] of wrongReplies) {
    it(`a range reply with ${what}: EIO in one line`, async () => {
      const srv = await rawServer((head, s) => {
        if (head.startsWith('HEAD')) return void s.write(HEAD_OK(1_000_000));
        s.end(reply);
      });
      try {
        const err = await readErr(await openUrl(srv.url), 65536, 4096);
        assert.equal(err.code, 'EIO');
        assert.match(err.message, re);
        assert.ok(err.message.startsWith(`Could not read '${srv.url}': `) && !err.message.includes('\n'), err.message);
      } finally {
        await srv.close();
      }
    });
  }

  it('a HEAD without Content-Length or without Accept-Ranges is refused as QEMU refuses it', async () => {
    const cases: [string, RegExp][] = [
      ['HTTP/1.1 200 OK\r\nAccept-Ranges: bytes\r\nTransfer-Encoding: chunked\r\n\r\n', /: Server didn't report file size\.$/],
      ['HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n', /: Server does not support 'range' \(byte ranges\)\.$/],
      ['HTTP/1.1 200 OK\r\nContent-Length: 5\r\nAccept-Ranges: none\r\n\r\n', /: Server does not support 'range' \(byte ranges\)\.$/],
      ['HTTP/1.1 200 OK\r\nContent-Length: 1152921504606846976\r\nAccept-Ranges: bytes\r\n\r\n', /: the server reports a file size of 1152921504606846976 bytes, which vdisk cannot address$/],
      ['HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n', /: The requested URL returned error: 404 Not Found$/],
    ];
    for (const [reply, re] of cases) {
      const srv = await rawServer((_head, s) => s.write(reply));
      try {
        await assert.rejects(openUrl(srv.url), (e: Error) => re.test(e.message) && e.message.startsWith(`Could not open '${srv.url}'`));
      } finally {
        await srv.close();
      }
    }
  });

  it('a server that answers the HEAD and then never the read: ETIMEDOUT after the timeout', async () => {
    const srv = await rawServer((head, s) => void (head.startsWith('HEAD') && s.write(HEAD_OK(1_000_000))));
    try {
      const node = await openUrl(srv.url, {}, 1);
      const err = await readErr(node, 0, 512);
      assert.equal(err.code, 'ETIMEDOUT');
      assert.equal(err.message, `Could not read '${srv.url}': no complete reply from the server within 1 s (ETIMEDOUT)`);
    } finally {
      await srv.close();
    }
  });

  it('the node\'s own timeout option wins over the open\'s', async () => {
    const srv = await rawServer((head, s) => void (head.startsWith('HEAD') && s.write(HEAD_OK(1_000_000))));
    try {
      const err = await readErr(await openUrl(srv.url, { timeout: 1 }, 600), 0, 512);
      assert.match(err.message, /within 1 s \(ETIMEDOUT\)$/);
    } finally {
      await srv.close();
    }
  });

  it('vdisk info --timeout 2 against a server that accepts and never answers: exits 1 within 4 s, one line', async (t) => {
    const sockets = new Set<net.Socket>();
    const server = net.createServer((s) => void sockets.add(s.on('error', () => undefined)));
    const port = await listen(server);
    try {
      const r = await vdiskProcess(['info', '--timeout', '2', `http://127.0.0.1:${port}/x`]);
      t.diagnostic(`exited after ${r.ms} ms`);
      assert.deepEqual([r.code, r.signal, r.stdout], [1, null, '']);
      assert.equal(r.stderr, `vdisk info: Could not open 'http://127.0.0.1:${port}/x': no answer from the server within 2 s (ETIMEDOUT)\n`);
      assert.ok(r.ms < 4000, `exited after ${r.ms} ms`);
      assert.ok(sockets.size > 0, 'the server saw the connection');
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('a host that does not resolve: curl\'s words', async () => {
    // .invalid never resolves (RFC 6761), whether or not a resolver answers.
    await assert.rejects(openUrl('http://vdisk-test.invalid/x', {}, 5),
      (e: Error & { code?: string }) => e.code === 'ENOENT' && e.message === "Could not open 'http://vdisk-test.invalid/x': Could not resolve host: vdisk-test.invalid");
  });

  it('sends credentials and the cookie to the server named, not to one it redirects to', async () => {
    const other = await serve();
    const srv = await serve((req, res) => {
      if (req.headers.authorization !== `Basic ${Buffer.from('us@r:pw').toString('base64')}`) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="x"', 'content-length': 0 });
        return void res.end();
      }
      res.writeHead(302, { location: other.url, 'content-length': 0 });
      res.end();
    });
    try {
      await assert.rejects(openUrl(srv.url), (e: Error & { code?: string }) => e.code === 'EACCES'
        && e.message === `Could not open '${srv.url}': The requested URL returned error: 401 Unauthorized`);
      const withAuth = srv.url.replace('http://', 'http://us%40r:pw@');
      const node = await openUrl(withAuth, { cookie: 'session=abc' });
      assert.equal(node.filename, withAuth);
      const buf = new Uint8Array(4096);
      await node.read(8192, buf);
      assert.deepEqual(buf, FILE.subarray(8192, 8192 + 4096));
      await node.close();
      assert.equal(srv.requests.at(-1)!.headers.cookie, 'session=abc');
      assert.ok(other.requests.length >= 2);
      for (const r of other.requests) assert.deepEqual([r.headers.authorization, r.headers.cookie], [undefined, undefined]);
    } finally {
      await srv.close();
      await other.close();
    }
  });

  it('redirects: followed up to 10, never to another protocol; a permanent one is remembered', async () => {
    const target = await serve();
    let hops = 0;
    const srv = await serve((req, res) => {
      const [status, location] = req.url === '/moved' ? [301, target.url] : req.url === '/loop' ? [302, `/loop?${++hops}`]
        : req.url!.startsWith('/loop') ? [302, `/loop?${++hops}`] : [302, 'file:///etc/passwd'];
      res.writeHead(status, { location, 'content-length': 0 });
      res.end();
    });
    const base = srv.url.replace('/disk.img', '');
    try {
      const node = await openUrl(`${base}/moved`);
      for (let off = 0; off < 3 * 262144; off += 262144) await node.read(off, new Uint8Array(512)).catch(() => undefined);
      await node.close();
      assert.equal(srv.requests.filter((r) => r.url === '/moved').length, 1, 'later requests go straight to the new place');
      await assert.rejects(openUrl(`${base}/loop`), (e: Error) => e.message === `Could not open '${base}/loop': more than 10 redirects`);
      assert.equal(hops, 11);
      await assert.rejects(openUrl(`${base}/evil`), (e: Error) => e.message.endsWith(": the server redirected to 'file:///etc/passwd', which is not http or https"));
    } finally {
      await srv.close();
      await target.close();
    }
  });

  it('a keep-alive connection the server dropped as the request went out: sent again on a new one', async () => {
    // The second request on each connection is dropped unanswered, as by a server's idle timeout.
    const seen = new Map<net.Socket, number>();
    const srv = await serve((req, res) => {
      const n = (seen.get(req.socket) ?? 0) + 1;
      seen.set(req.socket, n);
      if (n === 2) return void req.socket.destroy();
      rangeServer(FILE)(req, res);
    });
    try {
      const node = await openUrl(srv.url);
      const buf = new Uint8Array(65536);
      await node.read(0, buf);
      assert.deepEqual(buf, FILE.subarray(0, 65536));
      await node.close();
      assert.equal(srv.requests.length, 3, 'HEAD, the dropped GET, the GET again');
    } finally {
      await srv.close();
    }
  });

  it('at most 8 requests in flight over at most 8 connections, whatever the caller asks at once', async () => {
    let active = 0;
    let peak = 0;
    const srv = await serve((req, res) => {
      active++;
      peak = Math.max(peak, active);
      setTimeout(() => {
        active--;
        rangeServer(FILE)(req, res);
      }, 20);
    });
    try {
      const node = await openUrl(srv.url, { readahead: 0 });
      const bufs = Array.from({ length: 40 }, () => new Uint8Array(2048));
      await Promise.all(bufs.map((b, i) => node.read(i * 2048, b)));
      bufs.forEach((b, i) => assert.deepEqual(b, FILE.subarray(i * 2048, i * 2048 + 2048)));
      await node.close();
      assert.equal(peak, 8);
      assert.ok(new Set(srv.requests.map((r) => r.socket)).size <= 8);
    } finally {
      await srv.close();
    }
  });
});
