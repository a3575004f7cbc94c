import { readFile } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { BlockError } from '../../core/errors.js';

/**
 * TLS credentials in QEMU's layouts: `tls-creds-x509,dir=D` (D/ca-cert.pem, D/server-cert.pem,
 * D/server-key.pem) and `tls-creds-psk,dir=D` (D/keys.psk, lines of `username:hexkey`, the
 * GnuTLS psktool format that nbdkit and libnbd read too).
 */
export interface TlsCredentials {
  readonly kind: 'x509' | 'psk';
  /** Options of the tls.Server that takes over a client's socket at STARTTLS. */
  readonly serverOptions: tls.TlsOptions;
}

async function readCredFile(dir: string, name: string, what: string): Promise<Buffer> {
  const file = path.join(dir, name);
  try {
    return await readFile(file);
  } catch (err) {
    throw new BlockError('EINVAL', `Cannot read TLS ${what} '${file}': ${(err as Error).message}`, { op: 'tls', path: file }, { cause: err });
  }
}

/**
 * X.509: with verifyPeer (QEMU's default for tls-creds-x509) a client must present a certificate
 * signed by the CA, as qemu-nbd asks.
 */
export async function loadX509Credentials(dir: string, opts: { verifyPeer?: boolean } = {}): Promise<TlsCredentials> {
  const verifyPeer = opts.verifyPeer ?? true;
  // One at a time, so the error always names the first file missing.
  const ca = await readCredFile(dir, 'ca-cert.pem', 'CA certificate');
  const cert = await readCredFile(dir, 'server-cert.pem', 'server certificate');
  const key = await readCredFile(dir, 'server-key.pem', 'server key');
  const serverOptions: tls.TlsOptions = { ca, cert, key, minVersion: 'TLSv1.2', requestCert: verifyPeer, rejectUnauthorized: verifyPeer };
  try {
    // Built here once so that bad PEM or a key that does not match fails at start-up, not per client.
    tls.createSecureContext(serverOptions);
  } catch (err) {
    throw new BlockError('EINVAL', `Invalid TLS credentials in '${dir}': ${(err as Error).message}`, { op: 'tls', path: dir }, { cause: err });
  }
  return { kind: 'x509', serverOptions };
}

/** The keys of a keys.psk file by username. Bad lines are errors, not skipped: a typo must not lock everyone out silently. */
export function parsePskFile(text: string, file: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    const colon = line.indexOf(':');
    const hex = line.slice(colon + 1).trim();
    if (colon <= 0 || !/^([0-9a-fA-F]{2})+$/.test(hex)) {
      throw new BlockError('EINVAL', `${file}:${i + 1}: expected username:hexkey`, { op: 'tls', path: file });
    }
    keys.set(line.slice(0, colon), Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw new BlockError('EINVAL', `${file} holds no keys`, { op: 'tls', path: file });
  return keys;
}

export async function loadPskCredentials(dir: string): Promise<TlsCredentials> {
  const file = path.join(dir, 'keys.psk');
  const keys = parsePskFile((await readCredFile(dir, 'keys.psk', 'PSK file')).toString('utf8'), file);
  return {
    kind: 'psk',
    serverOptions: {
      minVersion: 'TLSv1.2',
      // PSK suites are off by default in OpenSSL's list; TLS 1.3 suites work with PSK as they are.
      ciphers: 'ECDHE-PSK:DHE-PSK:PSK',
      pskCallback: (_socket: tls.TLSSocket, identity: string) => keys.get(identity) ?? null,
    },
  };
}
