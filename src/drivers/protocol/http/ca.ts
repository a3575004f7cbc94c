import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { BlockError } from '../../../core/errors.js';

/**
 * The vdisk launcher moves NODE_EXTRA_CA_CERTS aside into VDISK_EXTRA_CA_CERTS, so Node does not
 * parse a CA bundle at every start-up of every command. https is where those certificates are
 * wanted: the first https open reads them once and trusts them beside Node's own roots. Without
 * the variable the agent is given no `ca`, and Node's default store (with NODE_EXTRA_CA_CERTS
 * when a library user set it) applies.
 */
let cached: readonly string[] | undefined;
let cachedFor: string | undefined;

export function trustedCAs(): readonly string[] | undefined {
  const file = process.env.VDISK_EXTRA_CA_CERTS;
  if (!file) return undefined;
  if (cached && cachedFor === file) return cached;
  let pem: string;
  try {
    pem = readFileSync(file, 'latin1');
  } catch (err) {
    throw new BlockError('EINVAL', `Could not read the CA certificates in VDISK_EXTRA_CA_CERTS '${file}': ${(err as Error).message}`, { op: 'open', path: file });
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new BlockError('EINVAL', `VDISK_EXTRA_CA_CERTS '${file}' holds no PEM certificate`, { op: 'open', path: file });
  }
  cached = [...tls.rootCertificates, pem];
  cachedFor = file;
  return cached;
}
