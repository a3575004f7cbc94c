import type { DetectZeroes } from '../../core/types.js';
import type { CacheMode } from '../../drivers/protocol/file/index.js';
import { hasFlag, lastValue, parseArgs, type OptionSpec } from '../args.js';
import { UsageError } from '../errors.js';
import { storageTimeouts, TIMEOUT_OPTION, type StorageTimeouts } from '../open-image.js';

/** What `vdisk io` was asked to do: qemu-io's command line. */
export interface IoOptions {
  commands: string[];
  image: string | undefined;
  format: string | undefined;
  imageOpts: boolean;
  readOnly: boolean;
  cache: CacheMode | undefined;
  discardMode: 'unmap' | 'ignore';
  /** -C: the copy-on-read filter above the image. */
  copyOnRead: boolean;
  /** --detect-zeroes (vdisk's own; qemu-io takes it only inside --image-opts). */
  detectZeroes: DetectZeroes | undefined;
  forceShare: boolean;
  /** --timeout (vdisk's own). */
  timeouts: StorageTimeouts;
  help: boolean;
  version: boolean;
}

const SPECS: OptionSpec[] = [
  { short: 'c', long: 'cmd', value: true, multiple: true },
  { short: 'f', long: 'format', value: true, multiple: true },
  { short: 'r', long: 'read-only' },
  { short: 'n', long: 'nocache' },
  { short: 't', long: 'cache', value: true, multiple: true },
  { short: 'd', long: 'discard', value: true, multiple: true },
  { short: 'U', long: 'force-share' },
  // Accepted for qemu-io scripts; Node's thread-pool I/O has no AIO modes or misaligned buffers.
  { short: 'm', long: 'misalign' },
  { short: 'k', long: 'native-aio' },
  { short: 'i', long: 'aio', value: true, multiple: true },
  { long: 'image-opts' },
  TIMEOUT_OPTION,
  { short: 'C', long: 'copy-on-read' },
  { long: 'detect-zeroes', value: true, multiple: true },
  // Refused below with a message: vdisk has no snapshot overlay, tracing or objects.
  { short: 's', long: 'snapshot' },
  { short: 'T', long: 'trace', value: true, multiple: true },
  { long: 'object', value: true, multiple: true },
  { short: 'h', long: 'help' },
  { short: 'V', long: 'version' },
];

const UNSUPPORTED: [string, string][] = [
  ['snapshot', '-s (--snapshot)'], ['trace', '-T (--trace)'], ['object', '--object'],
];

/** bdrv_parse_cache_mode(): QEMU's names, "off" being an old spelling of "none". */
const CACHE_MODES: Record<string, CacheMode> = {
  writeback: 'writeback', writethrough: 'writethrough', none: 'none', off: 'none', directsync: 'directsync', unsafe: 'unsafe',
};

/** bdrv_parse_discard_flags(): qemu-io unmaps unless told to ignore discards. */
const DISCARD_MODES: Record<string, 'unmap' | 'ignore'> = { ignore: 'ignore', off: 'ignore', unmap: 'unmap', on: 'unmap' };

const DETECT_ZEROES: readonly DetectZeroes[] = ['off', 'on', 'unmap'];

/** Parses the command line; a mistake is a UsageError whose message is the whole line. */
export function parseIoArgs(argv: readonly string[]): IoOptions {
  const p = parseArgs(argv, SPECS, 'vdisk io');
  for (const [key, shown] of UNSUPPORTED) {
    if (hasFlag(p, key)) throw new UsageError(`vdisk io: option ${shown} is not supported`);
  }
  const cacheText = lastValue(p, 'cache');
  const cache = cacheText === undefined ? (hasFlag(p, 'nocache') ? 'none' : undefined) : CACHE_MODES[cacheText];
  if (cacheText !== undefined && !cache) throw new UsageError(`vdisk io: Invalid cache option: ${cacheText}`);
  const discardText = lastValue(p, 'discard') ?? 'unmap';
  const discardMode = DISCARD_MODES[discardText];
  if (!discardMode) throw new UsageError(`vdisk io: Invalid discard option: ${discardText}`);
  const detectText = lastValue(p, 'detect-zeroes');
  if (detectText !== undefined && !DETECT_ZEROES.includes(detectText as DetectZeroes)) {
    throw new UsageError(`vdisk io: Failed to parse detect_zeroes mode: invalid parameter value: ${detectText}`);
  }
  const aio = lastValue(p, 'aio');
  if (aio !== undefined && !['threads', 'native', 'io_uring'].includes(aio)) throw new UsageError(`vdisk io: Invalid aio option: ${aio}`);
  const format = lastValue(p, 'format');
  const imageOpts = hasFlag(p, 'image-opts');
  if (imageOpts && format !== undefined) throw new UsageError('vdisk io: --image-opts and -f are mutually exclusive');
  if (p.positionals.length > 1) throw new UsageError(`vdisk io: expecting one image, not ${p.positionals.length} ('${p.positionals[1]}' is extra)`);
  return {
    commands: p.options.get('cmd') ?? [],
    image: p.positionals[0],
    format,
    imageOpts,
    readOnly: hasFlag(p, 'read-only'),
    cache,
    discardMode,
    copyOnRead: hasFlag(p, 'copy-on-read'),
    detectZeroes: detectText as DetectZeroes | undefined,
    forceShare: hasFlag(p, 'force-share'),
    timeouts: storageTimeouts(p),
    help: hasFlag(p, 'help'),
    version: hasFlag(p, 'version'),
  };
}

export const USAGE = `Usage: vdisk io [OPTIONS]... [-c STRING]... [file]
Run qemu-io commands on a disk image: same command syntax and output as qemu-io.

  --image-opts         treat file as option string (driver=raw,file.filename=a.img)
  -c, --cmd STRING     execute command with its arguments from the given string
  -f, --format FMT     specifies the block driver to use (probed when absent)
  -r, --read-only      export read-only
  -n, --nocache        disable host cache, short for -t none
  -t, --cache=MODE     use the given cache mode for the image
                       (writeback, writethrough, none, directsync, unsafe)
  -d, --discard=MODE   use the given discard mode for the image (unmap, ignore)
  -C, --copy-on-read   enable copy-on-read (reads copy backing data into the image)
      --detect-zeroes=MODE  write all-zero data as zero writes (off, on, unmap)
  -U, --force-share    force shared permissions (needs -r; takes no image locks)
      --timeout SECONDS  fail with ETIMEDOUT when storage does not answer in time (default:
                       30 for network protocols, none for local files; 0: no limit)
  -m, -k, -i MODE      accepted for qemu-io compatibility, no effect
  -h, --help           display this help and exit
  -V, --version        output version information and exit

With no -c, commands are read from standard input (a prompt on a terminal).
See 'vdisk io -c help' for the commands.`;
