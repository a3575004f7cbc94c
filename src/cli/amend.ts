import { amendQcow2, type Qcow2AmendOptions } from '../drivers/format/qcow2/amend.js';
import { Qcow2Node } from '../drivers/format/qcow2/qcow2-node.js';
import type { CreateOption } from '../registry/driver.js';
import { hasFlag, lastValue, parseArgs } from './args.js';
import { print, type CliIo } from './context.js';
import { UsageError } from './errors.js';
import { cacheMode, openImage, TIMEOUT_HELP, TIMEOUT_OPTION } from './open-image.js';
import { QemuProgress } from './progress.js';
import { checkOptionList, parseQemuOpts } from './qemu-opts.js';
import { resizeImage } from './resize.js';

const HELP = `usage: vdisk amend [-f FMT | --image-opts] [-t CACHE] [-p] [-q] [--timeout SECONDS] -o OPTIONS IMAGE
Changes format options of an existing image, as qemu-img amend does ('-o help' lists them).
qcow2: compat (0.10 or 1.1), lazy_refcounts, refcount_bits, size; backing_file and backing_fmt
only as they are (use vdisk rebase to change them).
${TIMEOUT_HELP}`;

/** An amend option: its type for the parser, and its line in `-o help`. */
interface AmendOption extends CreateOption {
  readonly help: string;
}

/** qcow2_amend_opts in QEMU 7.2, as `-o help` lists them. */
const AMEND_OPTIONS: readonly AmendOption[] = [
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: 'Image format of the base image' },
  { name: 'compat', type: 'string', help: 'Compatibility level (v2 [0.10] or v3 [1.1])' },
  { name: 'data_file', type: 'string', help: 'File name of an external data file' },
  { name: 'data_file_raw', type: 'bool', help: 'The external data file must stay valid as a raw image' },
  { name: 'encrypt.iter-time', type: 'number', help: 'Time to spend in PBKDF in milliseconds' },
  { name: 'encrypt.keyslot', type: 'number', help: 'Select a single keyslot to modify explicitly' },
  { name: 'encrypt.new-secret', type: 'string', help: 'New secret to set in the matching keyslots. Empty string to erase' },
  { name: 'encrypt.old-secret', type: 'string', help: 'Select all keyslots that match this password' },
  { name: 'encrypt.state', type: 'string', help: 'Select new state of affected keyslots (active/inactive)' },
  { name: 'lazy_refcounts', type: 'bool', help: 'Postpone refcount updates' },
  { name: 'refcount_bits', type: 'number', help: 'Width of a reference count entry in bits' },
  { name: 'size', type: 'size', help: 'Virtual disk size' },
];

/** How `-o help` names each type, as QEMU's qemu_opts_print_help does. */
const TYPE_NAMES: Record<CreateOption['type'], string> = { string: 'str', number: 'num', bool: 'bool (on/off)', size: 'size' };

/** qcow2 options that only image creation takes: qemu-img names them so. */
const CREATE_ONLY = new Set([
  'cluster_size', 'compression_type', 'extended_l2', 'preallocation', 'encryption', 'encrypt.format', 'encrypt.key-secret',
  'encrypt.cipher-alg', 'encrypt.cipher-mode', 'encrypt.ivgen-alg', 'encrypt.ivgen-hash-alg', 'encrypt.hash-alg',
]);

export async function amend(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, [
    { short: 'o', long: 'options', value: true, multiple: true }, { short: 'f', long: 'format', value: true },
    { long: 'image-opts' }, { short: 't', long: 'cache', value: true }, { long: 'force' }, { short: 'p', long: 'progress' },
    { short: 'q', long: 'quiet' }, { short: 'h', long: 'help' }, TIMEOUT_OPTION,
  ], 'vdisk amend');
  if (hasFlag(p, 'help')) return print(io, HELP), 0;
  const lists = p.options.get('options');
  if (!lists) throw new UsageError('Must specify options (-o)');
  // qemu-img joins the lists with commas, so none may start with one or end with an odd one.
  for (const list of lists) checkOptionList(list);
  // qemu-img's has_help_option: a bare "help" or "?" anywhere in the lists.
  const wantsHelp = lists.some((l) => l.split(/,(?!,)/).some((part) => part === 'help' || part === '?'));
  const format = lastValue(p, 'format');
  if (wantsHelp && format !== undefined) return amendHelp(io, format);
  if (p.positionals.length !== 1) throw new UsageError('Expecting one image file name');

  await using node = await openImage(p, p.positionals[0]!, { readOnly: false, cache: cacheMode(lastValue(p, 'cache')) });
  if (wantsHelp) return amendHelp(io, node.driver);
  if (!(node instanceof Qcow2Node)) throw new UsageError(`Format driver '${node.driver}' does not support option amendment`);
  const options = amendOptions(lists.join(','));
  const progress = new QemuProgress(hasFlag(p, 'progress') && !hasFlag(p, 'quiet') ? io.stdout : undefined, 1);
  try {
    progress.print(0, 0);
    await amendQcow2(node, options, { resize: (size) => resizeImage(node, size), progress: (percent) => progress.print(percent, 0) });
    progress.print(100, 0);
  } finally {
    progress.end();
  }
  await node.flush();
  return 0;
}

function amendHelp(io: CliIo, format: string): number {
  if (format !== 'qcow2') throw new UsageError(`Format driver '${format}' does not support option amendment`);
  print(io, `Amend options for '${format}':`);
  for (const { name, type, help } of AMEND_OPTIONS) print(io, `  ${`${name}=<${TYPE_NAMES[type]}>`.padEnd(22)} - ${help}`);
  return 0;
}

/** The options checked as QEMU's option parser checks them, then named for the driver. */
function amendOptions(text: string): Qcow2AmendOptions {
  const unknown = (name: string) =>
    CREATE_ONLY.has(name) ? `Invalid parameter '${name}': this option is only supported for image creation` : `Invalid parameter '${name}'`;
  const values = parseQemuOpts(text, AMEND_OPTIONS, unknown);
  const str = (k: string) => values.get(k) as string | undefined;
  // qcow2_amend_options reads numbers as a C int.
  const num = (k: string) => (values.has(k) ? Number(BigInt.asIntN(32, values.get(k) as bigint)) : undefined);
  const bool = (k: string) => values.get(k) as boolean | undefined;
  return {
    size: size(values.get('size') as bigint | undefined),
    compat: str('compat'),
    backingFile: str('backing_file'),
    backingFormat: str('backing_fmt'),
    dataFile: str('data_file'),
    dataFileRaw: bool('data_file_raw'),
    lazyRefcounts: bool('lazy_refcounts'),
    refcountBits: num('refcount_bits'),
    encryption: [...values.keys()].some((k) => k.startsWith('encrypt.')),
  };
}

function size(value: bigint | undefined): number | undefined {
  if (value !== undefined && value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new UsageError(`Value '${value}' is too large for vdisk (at most 2^53 - 1 bytes)`);
  }
  return value === undefined ? undefined : Number(value);
}
