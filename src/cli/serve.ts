import path from 'node:path';
import type { DetectZeroes } from '../core/types.js';
import type { DiscardMode } from '../nbd/server/export.js';
import { NbdServer, type ListenTarget } from '../nbd/server/server.js';
import type { TlsCredentials } from '../nbd/server/tls.js';
import { NBD_DEFAULT_PORT } from '../nbd/protocol.js';
import { hasFlag, lastValue, parseArgs, type OptionSpec, type Parsed } from './args.js';
import { print, type CliIo } from './context.js';
import { UsageError } from './errors.js';
import { cacheMode } from './open-image.js';
import { parseObject, tlsCredentials } from './serve-objects.js';
import { exportSpecs, openExports, type ExportSettings } from './serve-exports.js';
import { activationFds, forkServer, isForkedServer, reportToParent, writePidFile } from './serve-daemon.js';

const HELP = `usage: vdisk serve [OPTIONS] IMAGE...
Exports images over NBD, taking qemu-nbd's options.

  -p, --port=PORT           TCP port to listen on (default ${NBD_DEFAULT_PORT})
  -b, --bind=IFACE          interface to bind to (default 0.0.0.0)
  -k, --socket=PATH         listen on a Unix socket instead of TCP
  -e, --shared=NUM          serve NUM clients at once (default 1; 0 = unlimited)
  -t, --persistent          don't exit when the last client disconnects
  -x, --export-name=NAME    export name (default empty)
  -D, --description=TEXT    export description
  -A, --allocation-depth    offer the qemu:allocation-depth metadata context
  -r, --read-only           export read-only
  -f, --format=FORMAT       image format (probed when absent)
      --image-opts          IMAGE is a set of image options (driver=…,file.filename=…)
      --export=name=N,file=F[,format=FMT][,description=TEXT][,read-only=on]
                            one more named export (repeatable)
  -n, --nocache             same as --cache=none
      --cache=MODE          none, writeback (default), writethrough, directsync, unsafe
      --aio=MODE            native, io_uring or threads (accepted; vdisk has one I/O path)
      --discard=MODE        ignore (default) or unmap
      --detect-zeroes=MODE  off (default), on or unmap
      --copy-on-read        copy what clients read from the backing chain into the image
      --object=TYPE,id=ID,… tls-creds-x509 or tls-creds-psk (endpoint=server,dir=DIR)
      --tls-creds=ID        require TLS with the credentials of --object ID
      --pid-file=PATH       write the server's process id to PATH
      --fork                return once the server listens, leaving it in the background
  -v, --verbose             report dropped clients and failures on stderr

Several IMAGEs are exported under their file names. Under systemd socket activation
(LISTEN_FDS) the server uses the inherited sockets, as in 'nbdinfo -- [ vdisk serve IMAGE ]'.`;

const OPTIONS: OptionSpec[] = [
  { short: 'p', long: 'port', value: true }, { short: 'b', long: 'bind', value: true },
  { short: 'k', long: 'socket', value: true }, { short: 'e', long: 'shared', value: true },
  { short: 't', long: 'persistent' }, { short: 'x', long: 'export-name', value: true },
  { short: 'D', long: 'description', value: true }, { short: 'A', long: 'allocation-depth' },
  { short: 'r', long: 'read-only' }, { short: 'f', long: 'format', value: true }, { long: 'image-opts' },
  { long: 'export', value: true, multiple: true }, { short: 'n', long: 'nocache' }, { long: 'cache', value: true },
  { long: 'aio', value: true }, { long: 'discard', value: true }, { long: 'detect-zeroes', value: true },
  { long: 'copy-on-read' },
  { long: 'object', value: true, multiple: true }, { long: 'tls-creds', value: true },
  { long: 'pid-file', value: true }, { long: 'fork' }, { short: 'v', long: 'verbose' }, { short: 'h', long: 'help' },
];

const DISCARD: Record<string, DiscardMode> = { ignore: 'ignore', off: 'ignore', unmap: 'unmap', on: 'unmap' };

function parseInteger(text: string, max: number): number | undefined {
  if (!/^\d+$/.test(text)) return undefined;
  const n = Number(text);
  return n <= max ? n : undefined;
}

/** Where to listen: inherited sockets, a Unix socket, or TCP; conflicting choices are errors. */
function listenTargets(p: Parsed, activated: number[] | undefined): ListenTarget[] {
  const socket = lastValue(p, 'socket');
  const portText = lastValue(p, 'port');
  const bind = lastValue(p, 'bind');
  if (activated) {
    if (socket !== undefined || portText !== undefined || bind !== undefined) {
      throw new UsageError('-k, -p and -b cannot be used under socket activation');
    }
    return activated.map((fd) => ({ fd }));
  }
  if (socket !== undefined) {
    if (portText !== undefined || bind !== undefined) throw new UsageError('-k cannot be combined with -p or -b');
    return [{ path: path.resolve(socket) }];
  }
  const port = portText === undefined ? NBD_DEFAULT_PORT : parseInteger(portText, 65535);
  if (port === undefined) throw new UsageError(`Invalid port '${portText}'`);
  return [{ port, host: bind ?? '0.0.0.0' }];
}

function exportSettings(p: Parsed): ExportSettings {
  const discardText = lastValue(p, 'discard') ?? 'ignore';
  const discard = DISCARD[discardText];
  if (!discard) throw new UsageError(`Invalid discard mode \`${discardText}'`);
  const detect = lastValue(p, 'detect-zeroes') ?? 'off';
  if (!['off', 'on', 'unmap'].includes(detect)) throw new UsageError(`Invalid detect-zeroes mode '${detect}'`);
  if (detect === 'unmap' && discard !== 'unmap') {
    throw new UsageError('setting detect-zeroes to unmap is not allowed without setting discard operation to unmap');
  }
  const aio = lastValue(p, 'aio');
  if (aio !== undefined && !['native', 'io_uring', 'threads'].includes(aio)) throw new UsageError(`Invalid aio mode '${aio}'`);
  const cache = hasFlag(p, 'nocache') ? 'none' : lastValue(p, 'cache');
  return {
    open: { cache: cacheMode(cache), detectZeroes: detect as DetectZeroes, copyOnRead: hasFlag(p, 'copy-on-read') },
    discard,
    allocationDepth: hasFlag(p, 'allocation-depth'),
  };
}

export async function serve(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, OPTIONS, 'vdisk serve');
  if (hasFlag(p, 'help')) return print(io, HELP), 0;
  // Everything a user can get wrong is checked before a process is forked or an image opened.
  const specs = exportSpecs(p);
  const settings = exportSettings(p);
  const sharedText = lastValue(p, 'shared') ?? '1';
  const maxClients = parseInteger(sharedText, 2 ** 31);
  if (maxClients === undefined) throw new UsageError(`Invalid shared device number '${sharedText}'`);
  const objects = (p.options.get('object') ?? []).map(parseObject);
  const tlsId = lastValue(p, 'tls-creds');
  if (hasFlag(p, 'fork') && !isForkedServer()) {
    await forkServer(argv);
    return 0;
  }
  const verbose = hasFlag(p, 'verbose');
  try {
    const targets = listenTargets(p, activationFds());
    const tls: TlsCredentials | undefined = tlsId === undefined ? undefined : await tlsCredentials(objects, tlsId);
    const exports = await openExports(specs, settings);
    const server = new NbdServer({
      exports, maxClients, tls,
      log: verbose ? (m) => io.stderr.write(`vdisk serve: ${m}\n`) : undefined,
    });
    try {
      for (const t of targets) await server.listen(t);
      const pidFile = lastValue(p, 'pid-file');
      if (pidFile !== undefined) await writePidFile(pidFile);
      reportToParent({ ready: true });
      await untilStopped(server, hasFlag(p, 'persistent'));
    } finally {
      await server.close();
      await Promise.allSettled(exports.map((e) => e.node.close()));
    }
    return 0;
  } catch (err) {
    reportToParent({ error: err instanceof Error ? err.message : String(err) });
    throw err;
  }
}

/**
 * Serves until SIGINT/SIGTERM, or (without -t) until the last client has gone, as qemu-nbd does.
 * A second signal during the graceful stop drops the clients that are still connected.
 */
async function untilStopped(server: NbdServer, persistent: boolean): Promise<void> {
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop).off('SIGTERM', stop);
      server.off('idle', stop);
      const force = () => server.abort();
      process.once('SIGINT', force).once('SIGTERM', force);
      void server.close().finally(() => process.off('SIGINT', force).off('SIGTERM', force));
      resolve();
    };
    process.on('SIGINT', stop).on('SIGTERM', stop);
    if (!persistent) server.on('idle', stop);
  });
}
