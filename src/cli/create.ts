import type { CreateOption } from '../registry/driver.js';
import { registry } from '../registry/index.js';
import { combinePath } from '../registry/registry.js';
import { lastValue, parseArgs, hasFlag } from './args.js';
import { print, type CliIo } from './context.js';
import { UsageError } from './errors.js';
import { openStorage, storageTimeouts, TIMEOUT_HELP, TIMEOUT_OPTION, type StorageTimeouts } from './open-image.js';
import { parseSize } from './sizes.js';

const HELP = `usage: vdisk create [-q] -f FMT [-o OPTIONS] [-b BACKING [-F BACKING_FMT]] [-u] [--timeout SECONDS] IMAGE [SIZE]
Creates a new image, as qemu-img create does; SIZE defaults to the backing file's.
raw options: preallocation=off|falloc|full.
qcow2 options: cluster_size, compat, lazy_refcounts, refcount_bits, extended_l2, preallocation,
data_file, data_file_raw, compression_type, backing_file, backing_fmt.
${TIMEOUT_HELP}`;

const SECTOR = 512;

/** `-o a=1,b=2` (several -o accumulate; a doubled comma escapes a comma in a value). */
export function parseCreateOptions(values: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const value of values) {
    for (const part of value.split(/,(?!,)/).map((s) => s.replace(/,,/g, ','))) {
      if (part === '') continue;
      const eq = part.indexOf('=');
      if (eq <= 0) throw new UsageError(`Invalid option '${part}': expected key=value`);
      out[part.slice(0, eq)] = part.slice(eq + 1);
    }
  }
  return out;
}

export async function create(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, [
    { short: 'f', long: 'format', value: true }, { short: 'o', long: 'options', value: true, multiple: true },
    { short: 'q', long: 'quiet' }, { short: 'h', long: 'help' }, { short: 'b', long: 'backing', value: true },
    { short: 'F', long: 'backing-format', value: true }, { short: 'u', long: 'unsafe' }, TIMEOUT_OPTION,
  ], 'vdisk create');
  if (hasFlag(p, 'help')) return print(io, HELP), 0;
  const timeouts = storageTimeouts(p);
  const format = lastValue(p, 'format') ?? 'raw';
  const [filename, sizeText, ...extra] = p.positionals;
  if (!filename) throw new UsageError('Expecting image file name');
  if (extra.length > 0) throw new UsageError(`Unexpected argument '${extra[0]}'`);
  const driver = registry.has(format) ? registry.get(format) : undefined;
  if (!driver || driver.kind !== 'format' || !driver.create) throw new UsageError(`${filename}: Unknown file format '${format}'`);
  const options = parseCreateOptions(p.options.get('options') ?? []);
  for (const key of Object.keys(options)) {
    if (!driver.createOptions?.some((o) => o.name === key)) throw new UsageError(`${filename}: Invalid parameter '${key}'`);
  }
  const backing = lastValue(p, 'backing');
  if (backing !== undefined) options.backing_file = backing;
  const backingFormat = lastValue(p, 'backing-format');
  if (backingFormat !== undefined) options.backing_fmt = backingFormat;
  const sizeSource = sizeText ?? options.size;
  delete options.size;
  let size: number;
  if (sizeSource !== undefined) {
    try {
      size = parseSize(sizeSource);
    } catch {
      throw new UsageError(`Invalid image size specified '${sizeSource}'. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`);
    }
  } else if (options.backing_file !== undefined && !hasFlag(p, 'unsafe')) {
    size = await backingSize(filename, options.backing_file, options.backing_fmt, timeouts);
  } else {
    throw new UsageError(`${filename}: Image creation needs a size parameter`);
  }
  // As qemu-img does, the backing file must open (resolved beside the new image) unless -u.
  if (options.backing_file !== undefined && sizeSource !== undefined && !hasFlag(p, 'unsafe')) {
    await backingSize(filename, options.backing_file, options.backing_fmt, timeouts);
  }
  if (!hasFlag(p, 'quiet')) {
    print(io, `Formatting '${filename}', ${formattingSummary(format, driver.createOptions ?? [], { ...options, size: String(size) })}`);
  }
  // qemu-img rounds the size up to whole sectors.
  const rounded = Math.ceil(size / SECTOR) * SECTOR;
  await driver.create({ filename, size: rounded, options });
  return 0;
}

/**
 * The options of qemu-img create's "Formatting" line: every option given or with a default, in
 * the driver's order; sizes and numbers as parsed numbers.
 */
export function formattingSummary(format: string, descs: readonly CreateOption[], options: Record<string, string>): string {
  const parts = [`fmt=${format}`];
  for (const d of descs) {
    const given = options[d.name];
    const value = given ?? d.default;
    if (value === undefined) continue;
    parts.push(`${d.name}=${given !== undefined && (d.type === 'size' || d.type === 'number') ? asNumber(given) : value}`);
  }
  return parts.join(' ');
}

/** A size or number option as QEMU shows it once parsed; as given when it does not parse (the driver then refuses it). */
function asNumber(text: string): string {
  try {
    return String(parseSize(text));
  } catch {
    return text;
  }
}

/** The virtual size of the backing file an image will name, opened as the image will open it. */
async function backingSize(image: string, backing: string, format: string | undefined, timeouts: StorageTimeouts): Promise<number> {
  // A URI (nbd://…) names its own place, as when the image opens it; only paths are relative.
  const node = await openStorage(registry.protocolFor(backing) ? backing : combinePath(image, backing), { format, readOnly: true }, timeouts);
  try {
    return node.size;
  } finally {
    await node.close();
  }
}
