import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import type { CacheMode } from '../drivers/protocol/file/index.js';
import { open, parseFilename, type NodeSpec, type OpenOptions } from '../registry/index.js';
import { lastValue, hasFlag, type OptionSpec, type Parsed } from './args.js';
import { withDeadline } from './deadline.js';
import { UsageError } from './errors.js';

/** `--timeout SECONDS`, which every command that opens storage takes. */
export const TIMEOUT_OPTION: OptionSpec = { long: 'timeout', value: true };

/** The image-opening options qemu-img's subcommands share. */
export const IMAGE_OPTIONS: OptionSpec[] = [
  { short: 'f', long: 'format', value: true },
  { short: 't', long: 'cache', value: true },
  { short: 'U', long: 'force-share' },
  { long: 'image-opts' },
  TIMEOUT_OPTION,
];

/** Seconds a network protocol waits for its server unless --timeout says otherwise. */
export const DEFAULT_NETWORK_TIMEOUT = 30;
/** The longest timeout a timer can keep (2^31 - 1 ms). */
const MAX_TIMEOUT = 2147483;

/** The --help lines of --timeout, for every command that takes it. */
export const TIMEOUT_HELP = `  --timeout SECONDS  fail with ETIMEDOUT when storage does not answer in time: each connect,
              handshake and request of nbd:// and http(s)://, opening an image, and each read,
              write and SEEK_DATA walk of a local file (default: ${DEFAULT_NETWORK_TIMEOUT} for network
              protocols, none for local files; 0: no limit)`;

/** What --timeout asks for, in seconds; 0 is no limit. */
export interface StorageTimeouts {
  /** Each connect, handshake and request of a network protocol. */
  network: number;
  /** Opening an image (its files, headers and backing chain), wherever it is, and each local read and write. */
  open: number;
}

export function storageTimeouts(p: Parsed): StorageTimeouts {
  const text = lastValue(p, 'timeout');
  // Local files wait as long as the kernel does unless asked otherwise, as QEMU's do.
  if (text === undefined) return { network: DEFAULT_NETWORK_TIMEOUT, open: 0 };
  const seconds = /^\d+(\.\d*)?$/.test(text) ? Number(text) : NaN;
  if (!(seconds <= MAX_TIMEOUT)) throw new UsageError(`Invalid timeout '${text}': expected seconds from 0 to ${MAX_TIMEOUT}`);
  return { network: seconds, open: seconds };
}

/**
 * The whole open's deadline runs this much past --timeout: a protocol driver with its own
 * deadline (nbd) starts its timer a little later (after loading its modules) and says more
 * precisely what did not answer, so its error should be the one reported.
 */
const OPEN_GRACE_SECONDS = 0.5;

/**
 * open() under the --timeout deadlines: the network one goes to the protocol drivers, which
 * bound every step themselves; the open one bounds the whole open, wherever a step hangs.
 */
export function openStorage(spec: string | NodeSpec, options: OpenOptions, timeouts: StorageTimeouts,
  name = typeof spec === 'string' ? spec : `json:${JSON.stringify(spec)}`): Promise<BlockNode> {
  const openDeadline = timeouts.open > 0 ? timeouts.open + OPEN_GRACE_SECONDS : 0;
  return withDeadline(openDeadline, open(spec, { networkTimeout: timeouts.network, fileTimeout: timeouts.open, ...options }),
    () => new BlockError('ETIMEDOUT', `Could not open '${name}': no answer within ${timeouts.open} s (ETIMEDOUT)`, { op: 'open', path: name }),
    (late) => late.close());
}

const CACHE_MODES = ['writeback', 'writethrough', 'none', 'directsync', 'unsafe'];

export function cacheMode(text: string | undefined): CacheMode | undefined {
  if (text === undefined) return undefined;
  if (!CACHE_MODES.includes(text)) throw new UsageError(`Invalid cache option: ${text}`);
  return text as CacheMode;
}

/** Opens IMAGE as the parsed options say; `--image-opts` takes key=value,... like QEMU. */
export async function openImage(p: Parsed, image: string, extra: OpenOptions = {}): Promise<BlockNode> {
  const options: OpenOptions = {
    format: lastValue(p, 'format'),
    cache: cacheMode(lastValue(p, 'cache')),
    locking: hasFlag(p, 'force-share') ? 'off' : undefined,
    ...extra,
  };
  let spec: string | NodeSpec = image;
  if (hasFlag(p, 'image-opts')) {
    if (options.format) throw new UsageError('--image-opts and --format are mutually exclusive');
    spec = parseImageOpts(image);
  }
  return openStorage(spec, options, storageTimeouts(p), image);
}

/** `driver=raw,file.filename=a.img` → a node spec (dotted keys are unflattened by the registry). */
export function parseImageOpts(text: string): ReturnType<typeof parseFilename> & object {
  if (text.startsWith('json:')) {
    const spec = parseFilename(text);
    if (typeof spec === 'string') throw new UsageError(`Invalid image options: ${text}`);
    return spec;
  }
  const spec: Record<string, unknown> = {};
  // QEMU escapes a comma inside a value by doubling it.
  for (const part of text.split(/,(?!,)/).map((s) => s.replace(/,,/g, ','))) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new UsageError(`Invalid image option '${part}': expected key=value`);
    spec[part.slice(0, eq)] = part.slice(eq + 1);
  }
  if (typeof spec.driver !== 'string') throw new UsageError("--image-opts needs a 'driver' key");
  return spec as { driver: string };
}

/** Values of qemu-img's `--output` option. */
export function outputFormat(p: Parsed): 'human' | 'json' {
  const v = lastValue(p, 'output') ?? 'human';
  if (v !== 'human' && v !== 'json') throw new UsageError(`--output must be used with human or json as argument.`);
  return v;
}

export function onePositional(p: Parsed, what: string): string {
  if (p.positionals.length === 0) throw new UsageError(`Expecting one image file name`);
  if (p.positionals.length > 1) throw new UsageError(`Unexpected argument '${p.positionals[1]}' after the ${what}`);
  return p.positionals[0]!;
}
