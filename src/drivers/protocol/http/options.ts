import { BlockError } from '../../../core/errors.js';
import type { NodeSpec } from '../../../registry/driver.js';
import { boolOption, numberOption, sizeOption, stringOption } from '../../../registry/options.js';

/** QEMU's curl defaults (CURL_BLOCK_OPT_*_DEFAULT) and its ceiling on `timeout` (CURL_TIMEOUT_MAX). */
export const DEFAULT_READAHEAD = 256 * 1024;
export const DEFAULT_TIMEOUT = 5;
const MAX_TIMEOUT = 10000;
/** A readahead buffer is allocated per request in flight; QEMU has no cap, vdisk keeps it sane. */
const MAX_READAHEAD = 64 * 1024 * 1024;

/** Options QEMU's curl driver takes that name a `--object secret` or a proxy: neither exists in vdisk. */
const UNSUPPORTED: Record<string, string> = {
  'password-secret': "secret objects are not supported; give the password in the URL (http://user:password@host/…) or as 'password'",
  'cookie-secret': "secret objects are not supported; give the cookie as 'cookie'",
  'proxy-username': 'HTTP proxies are not supported',
  'proxy-password-secret': 'HTTP proxies are not supported',
};

export const HTTP_OPTIONS = ['filename', 'url', 'readahead', 'timeout', 'sslverify', 'cookie', 'username', 'password', ...Object.keys(UNSUPPORTED)];

export interface HttpOptions {
  /** The URL as given: what `info` shows and messages name. */
  text: string;
  url: URL;
  readahead: number;
  /** Seconds for each whole request (connect, headers, body); undefined: the open's networkTimeout. */
  timeout?: number;
  sslverify: boolean;
  cookie?: string;
  /** `user:password` for Basic authentication, from the options or the URL's user information. */
  auth?: string;
}

function bad(message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'open' });
}

/** A header value must stay one header: no CR, LF or NUL a server would read as the next line. */
function headerSafe(key: string, value: string | undefined): string | undefined {
  if (value !== undefined && /[\r\n\0]/.test(value)) throw bad(`${key} must not contain line breaks`);
  return value;
}

/**
 * The node spec of an `http`/`https` node, checked as QEMU's curl_open checks it (its messages):
 * `url` (or the `filename` a `scheme://…` filename arrives as), `readahead`, `timeout`, `sslverify`,
 * `cookie`, `username`, and `password` in place of QEMU's password-secret.
 */
export function httpOptions(spec: NodeSpec, scheme: 'http' | 'https'): HttpOptions {
  for (const [key, why] of Object.entries(UNSUPPORTED)) {
    if (spec[key] !== undefined) throw bad(`${scheme}: option '${key}': ${why}`);
  }
  const readahead = sizeOption(spec, 'readahead') ?? DEFAULT_READAHEAD;
  if (readahead % 512 !== 0) throw bad(`HTTP_READAHEAD_SIZE ${readahead} is not a multiple of 512`);
  if (readahead > MAX_READAHEAD) throw bad(`readahead ${readahead} is larger than ${MAX_READAHEAD} bytes`);
  const timeout = numberOption(spec, 'timeout');
  if (timeout !== undefined && timeout > MAX_TIMEOUT) throw bad('timeout parameter is too large or negative');

  const filename = stringOption(spec, 'filename');
  const urlOption = stringOption(spec, 'url');
  if (filename !== undefined && urlOption !== undefined && filename !== urlOption) {
    throw bad(`${scheme}: 'filename' and 'url' name different URLs`);
  }
  const text = urlOption ?? filename;
  if (text === undefined) throw bad("curl block driver requires an 'url' option");

  if (!text.toLowerCase().startsWith(`${scheme}://`)) {
    throw bad(`${scheme} curl driver cannot handle the URL '${text}' (does not start with '${scheme}://')`);
  }
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw bad(`${scheme}: '${text}' is not a valid URL`);
  }
  // The URL's user information is taken as curl takes it; options win over it, as in curl.
  const username = stringOption(spec, 'username') ?? (url.username ? decodeURIComponent(url.username) : undefined);
  const password = stringOption(spec, 'password') ?? (url.password ? decodeURIComponent(url.password) : undefined);
  if (username?.includes(':')) throw bad(`${scheme}: a user name for Basic authentication cannot contain ':'`);
  url.username = '';
  url.password = '';
  return {
    text, url, readahead, timeout,
    sslverify: boolOption(spec, 'sslverify') ?? true,
    cookie: headerSafe('cookie', stringOption(spec, 'cookie')),
    auth: username !== undefined || password !== undefined ? `${username ?? ''}:${password ?? ''}` : undefined,
  };
}
