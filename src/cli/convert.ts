import { stat } from 'node:fs/promises';
import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import type { CacheMode } from '../drivers/protocol/file/index.js';
import type { ReflinkMode } from '../jobs/clone-plan.js';
import { ConvertJob } from '../jobs/convert-job.js';
import type { Job } from '../jobs/job.js';
import { registry } from '../registry/index.js';
import { hasFlag, lastValue, parseArgs, type Parsed } from './args.js';
import { print, type CliIo } from './context.js';
import { convertCache, reflinkMode } from './convert-modes.js';
import { parseCreateOptions } from './create.js';
import { UsageError } from './errors.js';
import { openImage, openStorage, outputFormat, storageTimeouts, TIMEOUT_HELP, TIMEOUT_OPTION } from './open-image.js';
import { strtol } from './io/numbers.js';
import { QemuProgress } from './progress.js';
import { parseSize } from './sizes.js';

const HELP = `usage: vdisk convert [-f FMT] [-O FMT] [-o OPTIONS] [-B BACKING [-F BACKING_FMT]] [-S SIZE] [-c] [-n]
       [--target-is-zero] [-m N] [-W] [-t CACHE] [-T SRC_CACHE] [--cache=CACHE] [--reflink=WHEN]
       [-U] [--image-opts] [-p] [-q] [--output=human|json] [--timeout SECONDS] SRC... DST
Copies one or more images (laid end to end) into a new or existing image, as qemu-img convert does:
only what the sources hold is copied, zeros stay sparse (-S, default 4k; -S 0 allocates everything).
  -B BACKING  create DST as an overlay of BACKING; ranges the source leaves to its own backing
              file are not copied (BACKING must hold what that backing file holds)
  -c          compress the data clusters of DST (qcow2; -o compression_type=zlib or zstd)
  -n          DST exists already (opened as -O, default raw); --target-is-zero: it reads as zeros
  -m N        requests in flight (1-16, default 8); -W lets writes complete out of order
  --cache=CACHE  host cache mode of sources and target (-T and -t each override it); 'none'
              keeps the copy out of the page cache
  --reflink=auto|always|never  raw to raw on one file system that shares extents (XFS, btrfs):
              clone instead of copying (default auto: clone where possible)
  --output=json  one JSON object per line as the copy runs and when it ends (QMP's query-jobs
              names: id, type, status, current-progress, total-progress, error)
${TIMEOUT_HELP}`;

/** --output=json's line maker, loaded only for it. */
type JobInfo = (typeof import('../jobs/job-info.js'))['jobInfo'];

const SECTOR = 512;
/** Formats whose images take compressed clusters (QEMU's block_driver_can_compress). */
const COMPRESSING_FORMATS = new Set(['qcow2']);
/** qemu-img's bounds: -S up to 16 MiB, -m up to 16 coroutines. */
const MAX_SPARSE = 32768 * SECTOR;
const MAX_IN_FLIGHT = 16;

interface ConvertArgs {
  parsed: Parsed;
  sources: string[];
  target: string;
  outFormat: string;
  createOptions: Record<string, string> | undefined;
  backing: string | undefined;
  backingFormat: string | undefined;
  sparseSize: number;
  skipCreate: boolean;
  targetIsZero: boolean;
  inFlight: number;
  outOfOrder: boolean;
  compressed: boolean;
  progress: boolean;
  quiet: boolean;
  output: 'human' | 'json';
  sourceCache: CacheMode | undefined;
  targetCache: CacheMode | undefined;
  reflink: ReflinkMode;
}

function parseConvertArgs(argv: string[]): ConvertArgs | 'help' {
  const p = parseArgs(argv, [
    { short: 'f', long: 'format', value: true }, { short: 'O', value: true }, { short: 'o', value: true, multiple: true },
    { short: 'B', value: true }, { short: 'F', value: true }, { short: 'S', value: true }, { short: 'n' },
    { long: 'target-is-zero' }, { short: 'm', value: true }, { short: 'W' }, { short: 'p' }, { short: 'q' },
    { short: 't', value: true }, { short: 'T', value: true }, { short: 'U', long: 'force-share' }, { long: 'image-opts' },
    { short: 'c' }, { short: 'h', long: 'help' }, { long: 'cache', value: true }, { long: 'reflink', value: true },
    { long: 'output', value: true }, TIMEOUT_OPTION,
  ], 'vdisk convert');
  if (hasFlag(p, 'help')) return 'help';
  const skipCreate = hasFlag(p, 'n');
  const targetIsZero = hasFlag(p, 'target-is-zero');
  if (skipCreate && p.options.has('o')) throw new UsageError('-o has no effect when skipping image creation');
  if (targetIsZero && !skipCreate) throw new UsageError('--target-is-zero requires use of -n flag');
  if (p.positionals.length < 2) throw new UsageError('Must specify image file name');
  const quiet = hasFlag(p, 'q');
  return {
    parsed: p,
    sources: p.positionals.slice(0, -1),
    target: p.positionals[p.positionals.length - 1]!,
    outFormat: lastValue(p, 'O') ?? 'raw',
    createOptions: skipCreate ? undefined : parseCreateOptions(p.options.get('o') ?? []),
    backing: lastValue(p, 'B'),
    backingFormat: lastValue(p, 'F'),
    sparseSize: sparseSize(lastValue(p, 'S')),
    skipCreate,
    targetIsZero,
    inFlight: inFlight(lastValue(p, 'm')),
    outOfOrder: hasFlag(p, 'W'),
    compressed: hasFlag(p, 'c'),
    progress: hasFlag(p, 'p') && !quiet,
    quiet,
    output: outputFormat(p),
    ...convertCache(p),
    reflink: reflinkMode(lastValue(p, 'reflink')),
  };
}

function sparseSize(text: string | undefined): number {
  if (text === undefined) return 4096;
  let value: number;
  try {
    value = parseSize(text);
  } catch {
    throw new UsageError('Invalid buffer size for sparse output specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
  }
  if (value % SECTOR !== 0 || value > MAX_SPARSE) {
    throw new UsageError(`Invalid buffer size for sparse output specified. Valid sizes are multiples of ${SECTOR} up to ${MAX_SPARSE}. Select 0 to disable sparse detection (fully allocates output).`);
  }
  return value;
}

function inFlight(text: string | undefined): number {
  if (text === undefined) return 8;
  // qemu_strtol with base 0, as qemu-img: decimal, 0x hex or 0 octal, nothing trailing.
  const { value, complete } = strtol(text);
  if (!complete || text === '' || value < 1n || value > BigInt(MAX_IN_FLIGHT)) throw new UsageError(`Invalid number of coroutines. Allowed number of coroutines is between 1 and ${MAX_IN_FLIGHT}`);
  return Number(value);
}

export async function convert(argv: string[], io: CliIo): Promise<number> {
  const a = parseConvertArgs(argv);
  if (a === 'help') return print(io, HELP), 0;
  const p = a.parsed;
  const timeouts = storageTimeouts(p);
  // --output=json reports progress itself, in its own lines.
  const progress = new QemuProgress(a.progress && a.output === 'human' ? io.stdout : undefined, 1);
  progress.print(0, 100);

  const sources: BlockNode[] = [];
  let target: BlockNode | undefined;
  try {
    for (const name of a.sources) sources.push(await openImage(p, name, { readOnly: true, cache: a.sourceCache }));
    const total = sources.reduce((sum, s) => sum + s.size, 0);
    const backing = a.backing ?? a.createOptions?.backing_file;
    if (backing !== undefined && sources.length > 1) {
      throw new UsageError('Having a backing file for the target makes no sense when concatenating multiple input images');
    }
    if (a.targetIsZero && backing !== undefined) throw new UsageError('Cannot use --target-is-zero when the destination image has a backing file');
    await refuseSourceAsTarget(sources, a.target);
    if (!a.skipCreate) await createTarget(a, total);
    target = await openStorage(a.target, { format: a.outFormat, cache: a.targetCache ?? 'unsafe' }, timeouts);
    if (a.compressed && !(await import('../jobs/compressed-target.js')).compressedTarget(target)) throw new UsageError('Compression not supported for this file format');
    if (a.skipCreate && target.size < total) throw new BlockError('EINVAL', 'output file is smaller than input file', { op: 'convert' });

    // Loaded before the job exists, so that its first state change is seen.
    const jobInfo = a.output === 'json' ? (await import('../jobs/job-info.js')).jobInfo : undefined;
    const job = new ConvertJob({
      sources,
      target,
      // A target made just now reads as zeros, unless it shows a backing file through; -S 0
      // wants every byte allocated, so zeros are written there whatever the target holds.
      targetIsZero: a.targetIsZero || (!a.skipCreate && backing === undefined && a.sparseSize > 0),
      // Without a fresh target, how far its backing file reaches is not ours to assume.
      targetBacking: backing === undefined ? undefined : { size: !a.skipCreate ? (target.backing?.size ?? Infinity) : Infinity },
      sparseSize: a.sparseSize,
      inFlight: a.inFlight,
      outOfOrder: a.outOfOrder,
      reflink: a.reflink,
      compressed: a.compressed,
    });
    const reporting = jobInfo ? reportJson(job, io, a.quiet, jobInfo)
      : total > 0 ? (async () => {
        for await (const e of job.events()) if (e.type === 'progress' && e.done > 0) progress.print((100 * e.done) / total, 0);
      })() : undefined;
    // Ctrl-C stops the copy between requests: nothing is left half-written and the target is
    // flushed and closed, so a qcow2 target stays consistent (and can be converted again).
    const interrupt = (signal: NodeJS.Signals) => job.cancel(new Error(`interrupted by ${signal}`));
    process.once('SIGINT', interrupt).once('SIGTERM', interrupt);
    try {
      await job.start();
    } finally {
      process.off('SIGINT', interrupt).off('SIGTERM', interrupt);
      // The job has concluded, so its events have ended: the last line is out before we return.
      await reporting;
    }
    progress.print(100, 0);
  } finally {
    progress.end();
    await target?.close();
    for (const s of sources) await s.close();
  }
  return 0;
}

/**
 * --output=json: the job as QMP's query-jobs shows it, one line when it starts running, one
 * whenever another whole percent is done (not with -q), and one when it concludes, with the
 * error if it failed.
 */
async function reportJson(job: Job<void>, io: CliIo, quiet: boolean, jobInfo: JobInfo): Promise<void> {
  const line = () => io.stdout.write(JSON.stringify(jobInfo(job, 'convert')) + '\n');
  // The line for the start shows 0%; progress lines follow from 1% on.
  let percent = 0;
  for await (const e of job.events()) {
    if (e.type === 'state' && (!quiet || e.state === 'concluded')) line();
    if (e.type === 'progress' && !quiet && e.total > 0 && Math.floor((100 * e.done) / e.total) > percent) {
      percent = Math.floor((100 * e.done) / e.total);
      line();
    }
  }
}

/**
 * A target that is one of the files the sources read (their images, backing files, data files)
 * would be truncated or overwritten while being read. qemu-img opens its sources without
 * sharing write access, so its create fails to lock such a file; vdisk's read-only raw opens
 * share it, so the same file is refused here, with the lock failure's words.
 */
export async function refuseSourceAsTarget(sources: readonly BlockNode[], target: string): Promise<void> {
  const t = await stat(target).catch(() => undefined);
  if (!t) return;
  const files: string[] = [];
  const walk = (node: BlockNode) => {
    if (node.driver === 'file') files.push(node.filename);
    for (const child of node.children.values()) walk(child);
  };
  sources.forEach(walk);
  for (const file of files) {
    const s = await stat(file).catch(() => undefined);
    if (s && s.dev === t.dev && s.ino === t.ino) {
      throw new BlockError('E_LOCKED', `Failed to get "write" lock; is another process using the image [${target}]?`, { op: 'convert', path: target });
    }
  }
}

/** Creates DST as qemu-img convert does: the format's create, sized to hold every source. */
async function createTarget(a: ConvertArgs, total: number): Promise<void> {
  const driver = registry.has(a.outFormat) ? registry.get(a.outFormat) : undefined;
  if (!driver || driver.kind !== 'format') throw new UsageError(`Unknown file format '${a.outFormat}'`);
  const protocol = registry.protocolFor(a.target);
  if (protocol && protocol !== 'file') throw new UsageError(`Protocol driver '${protocol}' does not support image creation`);
  if (!driver.create) throw new UsageError(`Format driver '${a.outFormat}' does not support image creation`);
  const options = { ...a.createOptions };
  for (const key of Object.keys(options)) {
    if (!driver.createOptions?.some((o) => o.name === key)) throw new UsageError(`Invalid parameter '${key}'`);
  }
  if (a.backing !== undefined || a.backingFormat !== undefined) {
    if (!driver.createOptions?.some((o) => o.name === 'backing_file')) throw new UsageError(`Backing file not supported for file format '${a.outFormat}'`);
    if (a.backing !== undefined) options.backing_file = a.backing;
    if (a.backingFormat !== undefined) options.backing_fmt = a.backingFormat;
  }
  if (options.backing_file !== undefined && options.backing_fmt === undefined) throw new UsageError('Use of backing file requires explicit backing format');
  if (a.compressed) {
    // The opened node says for sure; refuse here already, before anything is created.
    if (!COMPRESSING_FORMATS.has(a.outFormat)) throw new UsageError('Compression not supported for this file format');
    if ((options.preallocation ?? 'off') !== 'off') throw new UsageError('Compression and preallocation not supported at the same time');
  }
  delete options.size;
  try {
    await driver.create({ filename: a.target, size: Math.ceil(total / SECTOR) * SECTOR, options });
  } catch (err) {
    if (!(err instanceof BlockError)) throw err;
    throw new BlockError(err.code, `${a.target}: error while converting ${a.outFormat}: ${err.message}`, err.context, { cause: err });
  }
}
