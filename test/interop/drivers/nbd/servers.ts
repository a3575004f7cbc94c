import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Real NBD servers for the interop tests, each on a Unix socket of its own (or a free TCP port)
 * so parallel tests never collide. `stop()` kills the process and waits for it to exit.
 */
export interface Server {
  readonly uri: string;
  readonly socket: string;
  readonly process: ChildProcess;
  /** What the server wrote to stderr so far (nbdkit -v logs each request there). */
  output(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Tries to connect until the server answers; a server that never comes up fails the test instead of hanging it. */
async function waitForSocket(target: net.NetConnectOpts, child: ChildProcess, stderr: () => string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}: ${stderr()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(target);
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(20);
  }
  throw new Error(`server did not start listening: ${stderr()}`);
}

export async function start(cmd: string, args: string[], socket: string, uri: string, tcpPort?: number): Promise<Server> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    await waitForSocket(tcpPort ? { host: '127.0.0.1', port: tcpPort } : { path: socket }, child, () => err);
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return {
    uri, socket, process: child,
    output: () => err,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}

/** Runs `fn` with the server up, and stops it afterwards whatever happens. */
export async function withServer<T>(starting: Promise<Server>, fn: (server: Server) => Promise<T>): Promise<T> {
  const server = await starting;
  try {
    return await fn(server);
  } finally {
    await server.stop();
  }
}

/** `qemu-nbd -k SOCKET -x NAME -t [extra…] IMAGE`. */
export function qemuNbd(socket: string, image: string, extra: string[] = [], exportName = 'disk'): Promise<Server> {
  return start('qemu-nbd', ['-k', socket, '-x', exportName, '-t', ...extra, image], socket,
    `nbd+unix:///${exportName}?socket=${socket}`);
}

/** `qemu-nbd` on 127.0.0.1 and a free TCP port. */
export async function qemuNbdTcp(image: string, extra: string[] = [], exportName = 'disk'): Promise<Server> {
  const port = await freePort();
  return start('qemu-nbd', ['-b', '127.0.0.1', '-p', String(port), '-x', exportName, '-t', ...extra, image], '',
    `nbd://127.0.0.1:${port}/${exportName}`, port);
}

/** `nbdkit -f --exit-with-parent -U SOCKET [options…] PLUGIN [params…]`: options go before the plugin. */
export function nbdkit(socket: string, pluginAndParams: string[], options: string[] = []): Promise<Server> {
  return start('nbdkit', ['-f', '--exit-with-parent', '-U', socket, ...options, ...pluginAndParams], socket,
    `nbd+unix:///?socket=${socket}`);
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}
