import { BlockError } from '../../../core/errors.js';
import type { NbdClientOptions } from '../../../nbd/client/client.js';
import type { TlsCredentials } from '../../../nbd/client/tls.js';
import { checkExportName, NBD_SCHEMES, parseNbdFilename, type ServerAddress } from '../../../nbd/client/uri.js';
import { NBD_DEFAULT_PORT } from '../../../nbd/protocol/constants.js';
import type { DriverDef, NodeSpec } from '../../../registry/driver.js';
import { boolOption, numberOption, stringOption } from '../../../registry/options.js';

function bad(why: string): BlockError {
  return new BlockError('EINVAL', `nbd: ${why}`, { op: 'open' });
}

/** QEMU's `server` option: `{type: 'inet', host, port}` or `{type: 'unix', path}`. */
function serverOption(spec: NodeSpec): ServerAddress {
  const server = spec.server;
  if (server === null || typeof server !== 'object' || Array.isArray(server)) throw bad("the 'server' option must be an object (server.type, server.host …)");
  const s: NodeSpec = { ...(server as Record<string, unknown>), driver: 'nbd' };
  const type = stringOption(s, 'type') ?? (s.path !== undefined ? 'unix' : 'inet');
  const known = type === 'unix' ? ['driver', 'type', 'path'] : ['driver', 'type', 'host', 'port'];
  const extra = Object.keys(s).find((k) => !known.includes(k));
  if (extra) throw bad(`server.${extra} is not supported with server.type=${type}`);
  if (type === 'unix') {
    const path = stringOption(s, 'path');
    if (!path) throw bad('server.path is required with server.type=unix');
    return { type: 'unix', path };
  }
  if (type !== 'inet') throw bad(`server.type=${type} is not supported (inet or unix)`);
  const host = stringOption(s, 'host');
  if (!host) throw bad('server.host is required with server.type=inet');
  if (s.port === undefined) return { type: 'inet', host, port: NBD_DEFAULT_PORT };
  const port = Number(s.port);
  if (!/^\d{1,5}$/.test(String(s.port)) || port < 1 || port > 65535) throw bad(`server.port ${JSON.stringify(s.port)} is not a TCP port`);
  return { type: 'inet', host, port };
}

/** TLS settings, named as libnbd's URI parameters (QEMU's tls-creds names an object vdisk does not have). */
function tlsOption(spec: NodeSpec, required: boolean): TlsCredentials | undefined {
  if (spec['tls-creds'] !== undefined) throw bad("'tls-creds' objects are not supported; use tls-certificates=DIR or tls-psk-file=FILE");
  const x509Dir = stringOption(spec, 'tls-certificates');
  const pskFile = stringOption(spec, 'tls-psk-file');
  if (x509Dir && pskFile) throw bad('tls-certificates and tls-psk-file are mutually exclusive');
  if (!x509Dir && !pskFile) {
    if (required) throw bad('an nbds:// URI requires TLS: give tls-certificates=DIR or tls-psk-file=FILE');
    return undefined;
  }
  return {
    x509Dir, pskFile,
    pskIdentity: stringOption(spec, 'tls-username'),
    hostname: stringOption(spec, 'tls-hostname'),
    verifyPeer: boolOption(spec, 'tls-verify-peer'),
  };
}

/** The client options a node spec describes: a filename (URI) or QEMU's server/export options. */
export function clientOptions(spec: NodeSpec): NbdClientOptions {
  const filename = stringOption(spec, 'filename');
  let target: { server: ServerAddress; exportName: string; tls: boolean };
  if (filename !== undefined) {
    if (spec.server !== undefined || spec.export !== undefined) throw bad("'filename' cannot be combined with 'server' or 'export'");
    target = parseNbdFilename(filename);
  } else {
    if (spec.server === undefined) throw bad("a URI filename or the 'server' option is required");
    const exportName = stringOption(spec, 'export') ?? '';
    target = { server: serverOption(spec), exportName: checkExportName(exportName, exportName), tls: false };
  }
  return {
    server: target.server,
    exportName: target.exportName,
    tls: tlsOption(spec, target.tls),
    // Whole seconds, as QEMU takes reconnect-delay and open-timeout.
    reconnectDelay: numberOption(spec, 'reconnect-delay'),
    openTimeout: numberOption(spec, 'open-timeout'),
    requestTimeout: numberOption(spec, 'request-timeout'),
  };
}

export const nbdDriver: DriverDef = {
  name: 'nbd',
  kind: 'protocol',
  protocols: NBD_SCHEMES,
  options: [
    'filename', 'server', 'export', 'tls-creds', 'tls-hostname', 'tls-certificates', 'tls-psk-file', 'tls-username',
    'tls-verify-peer', 'reconnect-delay', 'open-timeout', 'request-timeout',
  ],
  async open(spec, ctx) {
    const opts = clientOptions(spec);
    // The client (net, tls and the wire codecs) loads on first use, not with every command.
    const [{ NbdClient }, { NbdNode }] = await Promise.all([import('../../../nbd/client/client.js'), import('./nbd-node.js')]);
    const client = await NbdClient.connect({ ...opts, requestTimeout: opts.requestTimeout ?? ctx.options.networkTimeout });
    return new NbdNode(client, {
      readOnly: boolOption(spec, 'read-only') ?? ctx.options.readOnly ?? false,
      nodeName: stringOption(spec, 'node-name'),
    });
  },
};
