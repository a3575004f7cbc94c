import { loadPskCredentials, loadX509Credentials, type TlsCredentials } from '../nbd/server/tls.js';
import { parseCreateOptions } from './create.js';
import { UsageError } from './errors.js';

/** A `--object` definition: its QOM type and its properties. */
export interface ObjectDef {
  type: string;
  id: string;
  props: Record<string, string>;
}

const TLS_TYPES = ['tls-creds-x509', 'tls-creds-psk'];

/** `--object TYPE,id=ID,k=v…` or `--object qom-type=TYPE,id=ID,…`, as QEMU writes them. */
export function parseObject(text: string): ObjectDef {
  const comma = text.search(/,(?!,)/);
  const head = comma === -1 ? text : text.slice(0, comma);
  const props = parseCreateOptions([head.includes('=') ? text : text.slice(head.length + 1)]);
  const type = head.includes('=') ? props['qom-type'] : head;
  delete props['qom-type'];
  if (!type) throw new UsageError(`Parameter 'qom-type' is missing`);
  if (!TLS_TYPES.includes(type)) throw new UsageError(`Parameter 'qom-type' does not accept value '${type}'`);
  const id = props.id;
  if (!id) throw new UsageError(`Parameter 'id' is missing`);
  delete props.id;
  return { type, id, props };
}

function onOff(value: string | undefined, key: string): boolean | undefined {
  if (value === undefined) return undefined;
  if (['on', 'yes', 'true'].includes(value)) return true;
  if (['off', 'no', 'false'].includes(value)) return false;
  throw new UsageError(`Parameter '${key}' expects 'on' or 'off'`);
}

/** Loads the credentials `--tls-creds=ID` names, checking them as qemu-nbd does. */
export async function tlsCredentials(objects: readonly ObjectDef[], id: string): Promise<TlsCredentials> {
  const def = objects.find((o) => o.id === id);
  if (!def) throw new UsageError(`Failed to get TLS creds: No TLS credentials with id '${id}'`);
  const { dir, endpoint = 'client', 'verify-peer': verifyPeer, ...rest } = def.props;
  // QEMU defaults to the client end; a server needs server credentials spelled out.
  if (endpoint !== 'server') throw new UsageError('Expecting TLS credentials with a server endpoint');
  if (!dir) throw new UsageError(`${def.type} '${id}' needs a dir= property`);
  const unknown = Object.keys(rest).filter((k) => !(def.type === 'tls-creds-psk' && k === 'username') && k !== 'priority');
  if (unknown.length > 0) throw new UsageError(`Property '${unknown[0]}' not found for ${def.type}`);
  return def.type === 'tls-creds-x509'
    ? loadX509Credentials(dir, { verifyPeer: onOff(verifyPeer, 'verify-peer') })
    : loadPskCredentials(dir);
}
