import { amendQcow2, type Qcow2AmendOptions } from '../drivers/format/qcow2/amend.js';
import { Qcow2Node } from '../drivers/format/qcow2/qcow2-node.js';
import { hasFlag, lastValue, parseArgs } from './args.js';
import { print, type CliIo } from './context.js';
import { parseCreateOptions } from './create.js';
import { UsageError } from './errors.js';
import { cacheMode, openImage, TIMEOUT_HELP, TIMEOUT_OPTION } from './open-image.js';
import { QemuProgress } from './progress.js';
import { resizeImage } from './resize.js';
import { qemuStrtosz } from './sizes.js';

const HELP = `usage: vdisk amend [-f FMT | --image-opts] [-t CACHE] [-p] [-q] [--timeout SECONDS] -o OPTIONS IMAGE
Changes format options of an existing image, as qemu-img amend does ('-o help' lists them).
qcow2: compat (0.10 or 1.1), lazy_refcounts, refcount_bits, size; backing_file and backing_fmt
only as they are (use vdisk rebase to change them).
${TIMEOUT_HELP}`;

type Kind = 'str' | 'bool' | 'num' | 'size';

/** qcow2_amend_opts in QEMU 7.2, as `-o help` lists them. */
const AMEND_OPTIONS: readonly [string, Kind, string][] = [
  ['backing_file', 'str', 'File name of a base image'],
  ['backing_fmt', 'str', 'Image format of the base image'],
  ['compat', 'str', 'Compatibility level (v2 [0.10] or v3 [1.1])'],
  ['data_file', 'str', 'File name of an external data file'],
  ['data_file_raw', 'bool', 'The external data file must stay valid as a raw image'],
  ['encrypt.iter-time', 'num', 'Time to spend in PBKDF in milliseconds'],
  ['encrypt.keyslot', 'num', 'Select a single keyslot to modify explicitly'],
  ['encrypt.new-secret', 'str', 'New secret to set in the matching keyslots. Empty string to erase'],
  ['encrypt.old-secret', 'str', 'Select all keyslots that match this password'],
  ['encrypt.state', 'str', 'Select new state of affected keyslots (active/inactive)'],
  ['lazy_refcounts', 'bool', 'Postpone refcount updates'],
  ['refcount_bits', 'num', 'Width of a reference count entry in bits'],
  ['size', 'size', 'Virtual disk size'],
];

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
  for (const list of lists) {
    // qemu-img's is_valid_option_list: lists are joined with commas, so none may start with one
    // or end with an odd one.
    if (list === '' || list.startsWith(',') || (list.length - list.replace(/,+$/, '').length) % 2 === 1) {
      throw new UsageError(`Invalid option list: ${list}`);
    }
  }
  // qemu-img's has_help_option: a bare "help" or "?" anywhere in the lists.
  const wantsHelp = lists.some((l) => l.split(/,(?!,)/).some((part) => part === 'help' || part === '?'));
  const format = lastValue(p, 'format');
  if (wantsHelp && format !== undefined) return amendHelp(io, format);
  if (p.positionals.length !== 1) throw new UsageError('Expecting one image file name');

  await using node = await openImage(p, p.positionals[0]!, { readOnly: false, cache: cacheMode(lastValue(p, 'cache')) });
  if (wantsHelp) return amendHelp(io, node.driver);
  if (!(node instanceof Qcow2Node)) throw new UsageError(`Format driver '${node.driver}' does not support option amendment`);
  const options = amendOptions(parseCreateOptions(lists));
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
  for (const [name, kind, text] of AMEND_OPTIONS) {
    const type = kind === 'bool' ? 'bool (on/off)' : kind;
    print(io, `  ${`${name}=<${type}>`.padEnd(22)} - ${text}`);
  }
  return 0;
}

/** The options checked as QEMU's option parser checks them, then named for the driver. */
function amendOptions(given: Record<string, string>): Qcow2AmendOptions {
  const values = new Map<string, string | boolean | number>();
  for (const [name, text] of Object.entries(given)) {
    const desc = AMEND_OPTIONS.find(([n]) => n === name);
    if (!desc) {
      throw new UsageError(CREATE_ONLY.has(name) ? `Invalid parameter '${name}': this option is only supported for image creation` : `Invalid parameter '${name}'`);
    }
    values.set(name, parseValue(name, desc[1], text));
  }
  const str = (k: string) => values.get(k) as string | undefined;
  const num = (k: string) => values.get(k) as number | undefined;
  const bool = (k: string) => values.get(k) as boolean | undefined;
  return {
    size: num('size'),
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

function parseValue(name: string, kind: Kind, text: string): string | boolean | number {
  switch (kind) {
    case 'str':
      return text;
    case 'bool':
      // qapi_bool_parse
      if (['on', 'yes', 'true', 'y'].includes(text)) return true;
      if (['off', 'no', 'false', 'n'].includes(text)) return false;
      throw new UsageError(`Parameter '${name}' expects 'on' or 'off'`);
    case 'num': {
      // qemu_strtou64, base 0; amend then reads the number as a C int.
      const m = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
      if (!m) throw new UsageError(`Parameter '${name}' expects a number`);
      const digits = m[2]!;
      const value = /^0[0-7]+$/.test(digits) ? BigInt(`0o${digits.slice(1)}`) : BigInt(digits);
      if (value >= 1n << 64n) throw new UsageError(`Value '${text}' is too large for parameter '${name}'`);
      // A minus wraps around, as strtoull's does.
      return Number(BigInt.asIntN(32, m[1] === '-' ? -value : value));
    }
    case 'size': {
      const r = qemuStrtosz(text);
      if (!r.ok && r.error === 'ERANGE') throw new UsageError(`Value '${text}' is out of range for parameter '${name}'`);
      if (!r.ok) throw new UsageError(`Parameter '${name}' expects a non-negative number below 2^64 (optional suffix k, M, G, T, P or E)`);
      if (r.value > BigInt(Number.MAX_SAFE_INTEGER)) throw new UsageError(`Value '${text}' is too large for vdisk (at most 2^53 - 1 bytes)`);
      return Number(r.value);
    }
  }
}
