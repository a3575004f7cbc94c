import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { BlockError, fromSystemError } from '../../core/errors.js';

/**
 * Client TLS credentials, as QEMU's `tls-creds-x509` / `tls-creds-psk` objects describe them:
 * an x509 directory (ca-cert.pem, and client-cert.pem + client-key.pem when the server wants a
 * client certificate) or a PSK file of `identity:hexkey` lines (nbdkit's and QEMU's keys.psk).
 */
export interface TlsCredentials {
  x509Dir?: string;
  /** Check the server's certificate against ca-cert.pem and its name (QEMU verify-peer; default on). */
  verifyPeer?: boolean;
  /** The name the server's certificate must carry (QEMU tls-hostname); the host otherwise. */
  hostname?: string;
  pskFile?: string;
  /** Which identity of the PSK file to use (QEMU's default is 'qemu'). */
  pskIdentity?: string;
}

/** Longest PSK file read: a key file is a few lines. */
const MAX_PSK_FILE = 64 * 1024;

async function optionalFile(file: string): Promise<Buffer | undefined> {
  try {
    return await readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fromSystemError(err, { op: 'read TLS credentials', path: file });
  }
}

async function pskKey(file: string, identity: string): Promise<Buffer> {
  const text = (await readFile(file).catch((err) => {
    throw fromSystemError(err, { op: 'read the PSK file', path: file });
  })).subarray(0, MAX_PSK_FILE).toString('utf8');
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0 && line.slice(0, colon) === identity) {
      const hex = line.slice(colon + 1).trim();
      if (!/^([0-9a-f]{2})+$/i.test(hex)) break;
      return Buffer.from(hex, 'hex');
    }
  }
  throw new BlockError('EINVAL', `'${file}' has no valid key for the PSK identity '${identity}'`, { op: 'open', path: file });
}

/** A function that runs the TLS handshake over the socket once STARTTLS was acknowledged. */
export async function tlsUpgrader(creds: TlsCredentials, host: string | undefined):
  Promise<(socket: Duplex) => Promise<Duplex>> {
  const options: tls.ConnectionOptions = {};
  if (creds.pskFile) {
    const identity = creds.pskIdentity ?? 'qemu';
    const psk = await pskKey(creds.pskFile, identity);
    // OpenSSL's client PSK callback serves TLS 1.2 PSK suites; GnuTLS servers (nbdkit, QEMU) offer them.
    Object.assign(options, { pskCallback: () => ({ psk, identity }), ciphers: 'PSK', maxVersion: 'TLSv1.2', checkServerIdentity: () => undefined });
  } else if (creds.x509Dir) {
    const dir = creds.x509Dir;
    const ca = await optionalFile(path.join(dir, 'ca-cert.pem'));
    const verify = creds.verifyPeer ?? true;
    if (verify && !ca) throw new BlockError('EINVAL', `TLS: '${dir}' has no ca-cert.pem to check the server with`, { op: 'open', path: dir });
    Object.assign(options, {
      ca, cert: await optionalFile(path.join(dir, 'client-cert.pem')), key: await optionalFile(path.join(dir, 'client-key.pem')),
      rejectUnauthorized: verify, servername: creds.hostname ?? (host && !/^[\d.:]+$/.test(host) ? host : undefined),
    });
    if (creds.hostname) options.checkServerIdentity = (_h, cert) => tls.checkServerIdentity(creds.hostname!, cert);
  } else {
    throw new BlockError('EINVAL', 'TLS needs an x509 directory or a PSK file', { op: 'open' });
  }
  return (socket) => new Promise<Duplex>((resolve, reject) => {
    const secure = tls.connect({ ...options, socket: socket as import('node:net').Socket });
    const onError = (err: Error): void => {
      secure.destroy();
      reject(new BlockError('EACCES', `TLS handshake failed: ${err.message}`, { op: 'open' }, { cause: err }));
    };
    secure.once('error', onError);
    secure.once('secureConnect', () => {
      secure.off('error', onError);
      resolve(secure);
    });
  });
}
