import type { BlockNode } from '../core/block-node.js';
import type { CacheMode } from '../drivers/protocol/file/index.js';
import { open, parseFilename, type OpenOptions } from '../registry/index.js';
import { lastValue, hasFlag, type OptionSpec, type Parsed } from './args.js';
import { UsageError } from './errors.js';

/** The image-opening options qemu-img's subcommands share. */
export const IMAGE_OPTIONS: OptionSpec[] = [
  { short: 'f', long: 'format', value: true },
  { short: 't', long: 'cache', value: true },
  { short: 'U', long: 'force-share' },
  { long: 'image-opts' },
];

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
  if (hasFlag(p, 'image-opts')) {
    if (options.format) throw new UsageError('--image-opts and --format are mutually exclusive');
    return open(parseImageOpts(image), options);
  }
  return open(image, options);
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
