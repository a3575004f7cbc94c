import { BlockError } from '../../core/errors.js';
import { NBD_DEFAULT_PORT, NBD_MAX_STRING } from '../protocol/constants.js';

/** Where the server listens (QEMU's SocketAddress `server.type=inet|unix`). */
export type ServerAddress = { type: 'inet'; host: string; port: number } | { type: 'unix'; path: string };

export interface NbdTarget {
  server: ServerAddress;
  exportName: string;
  /** `nbds…` URIs: the connection must use TLS. */
  tls: boolean;
}

/** The URI schemes of NBD (NetworkBlockDevice doc/uri.md) plus QEMU's `nbd:host:port` legacy form. */
export const NBD_SCHEMES = ['nbd', 'nbds', 'nbd+tcp', 'nbds+tcp', 'nbd+unix', 'nbds+unix'] as const;

function bad(text: string, why: string): BlockError {
  return new BlockError('EINVAL', `Invalid NBD filename '${text}': ${why}`, { op: 'open', path: text });
}

export function checkExportName(name: string, text: string): string {
  if (Buffer.byteLength(name, 'utf8') > NBD_MAX_STRING) throw bad(text, `the export name is longer than ${NBD_MAX_STRING} bytes`);
  if (name.includes('\0')) throw bad(text, 'the export name contains a NUL byte');
  return name;
}

export function checkPort(port: string | number, text: string): number {
  const n = typeof port === 'number' ? port : /^\d{1,5}$/.test(port) ? Number(port) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw bad(text, `'${port}' is not a TCP port`);
  return n;
}

/**
 * `nbd://host[:port]/export`, `nbd+unix:///export?socket=PATH` and the rest of doc/uri.md, or QEMU's
 * older `nbd:host:port[:exportname=NAME]` / `nbd:unix:PATH[:exportname=NAME]`.
 */
export function parseNbdFilename(text: string): NbdTarget {
  const scheme = /^([a-z+]+):/i.exec(text)?.[1]?.toLowerCase();
  if (!scheme || !(NBD_SCHEMES as readonly string[]).includes(scheme)) throw bad(text, 'not an nbd: filename');
  if (scheme === 'nbd' && !text.slice(4).startsWith('//')) return parseLegacy(text);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw bad(text, 'not a valid URI');
  }
  if (url.username || url.password) throw bad(text, 'user names (TLS PSK identities) in the URI are not supported; use the tls options');
  if (url.hash) throw bad(text, 'a URI fragment is not allowed');
  const exportName = checkExportName(decode(url.pathname.replace(/^\//, ''), text), text);
  const tls = scheme.startsWith('nbds');
  const query = [...url.searchParams.entries()];
  if (scheme.endsWith('+unix')) {
    if (url.host) throw bad(text, 'a Unix socket URI takes no host (nbd+unix:///export?socket=PATH)');
    const other = query.find(([k]) => k !== 'socket');
    if (other) throw bad(text, `unknown query parameter '${other[0]}'`);
    if (query.length !== 1 || !query[0]![1]) throw bad(text, "a Unix socket URI needs exactly one '?socket=PATH'");
    return { server: { type: 'unix', path: query[0]![1] }, exportName, tls };
  }
  if (query.length > 0) throw bad(text, `unknown query parameter '${query[0]![0]}'`);
  // WHATWG URL keeps IPv6 brackets in hostname; the socket layer wants the bare address.
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host) throw bad(text, 'no host');
  return { server: { type: 'inet', host, port: url.port ? checkPort(url.port, text) : NBD_DEFAULT_PORT }, exportName, tls };
}

function decode(s: string, text: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw bad(text, 'bad percent-encoding in the export name');
  }
}

/** `nbd:HOST:PORT[:exportname=NAME]` and `nbd:unix:PATH[:exportname=NAME]` (QEMU's first syntax). */
function parseLegacy(text: string): NbdTarget {
  let rest = text.slice(4);
  let exportName = '';
  const at = rest.indexOf(':exportname=');
  if (at !== -1) {
    exportName = checkExportName(rest.slice(at + ':exportname='.length), text);
    rest = rest.slice(0, at);
  }
  if (rest.startsWith('unix:')) {
    const path = rest.slice(5);
    if (!path) throw bad(text, 'no socket path after nbd:unix:');
    return { server: { type: 'unix', path }, exportName, tls: false };
  }
  // The port is after the last colon, so a bracketed IPv6 address may contain colons.
  const colon = rest.lastIndexOf(':');
  const host = (colon === -1 ? rest : rest.slice(0, colon)).replace(/^\[(.*)\]$/, '$1');
  if (!host) throw bad(text, 'no host');
  const port = colon === -1 ? NBD_DEFAULT_PORT : checkPort(rest.slice(colon + 1), text);
  return { server: { type: 'inet', host, port }, exportName, tls: false };
}

/**
 * The filename QEMU shows for an nbd node (its refresh_filename): what `qemu-img info` prints as
 * the image and `qemu-img map` as the file.
 */
export function nbdFilename(server: ServerAddress, exportName: string): string {
  if (server.type === 'unix') return exportName ? `nbd+unix:///${exportName}?socket=${server.path}` : `nbd+unix://?socket=${server.path}`;
  const host = server.host.includes(':') ? `[${server.host}]` : server.host;
  return exportName ? `nbd://${host}:${server.port}/${exportName}` : `nbd://${host}:${server.port}`;
}
