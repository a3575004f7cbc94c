import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import { qemuStrtosz } from '../core/sizes.js';
import { RawNode } from '../drivers/format/raw/index.js';
import { ConvertJob } from '../jobs/convert-job.js';
import { registry } from '../registry/index.js';
import { hasFlag, lastValue, parseArgs } from './args.js';
import { print, type CliIo } from './context.js';
import { refuseSourceAsTarget } from './convert.js';
import { UsageError } from './errors.js';
import { openImage, openStorage, storageTimeouts, TIMEOUT_HELP, TIMEOUT_OPTION } from './open-image.js';

const HELP = `usage: vdisk dd [-f FMT] [-O OUTPUT_FMT] [-U] [--image-opts] [--timeout SECONDS] [bs=BLOCK_SIZE] [count=BLOCKS]
       [skip=BLOCKS] if=INPUT of=OUTPUT
Copies INPUT (from block SKIP on) into OUTPUT, created anew (OUTPUT_FMT, default raw), as qemu-img dd does.
  bs=BYTES  block size (default 512; k, M, G … suffixes)
  count=N   stop at block N of the input (counted from the start of the input, skipped blocks
            included, as qemu-img dd counts them)
  skip=N    start at block N of the input
Holes and zeros in the input stay holes in OUTPUT.
${TIMEOUT_HELP}`;

const SECTOR = 512n;
const INT_MAX = 2n ** 31n - 1n;
const INT64_MAX = 2n ** 63n - 1n;

interface DdArgs {
  input: string;
  output: string;
  bs: bigint;
  count: bigint | undefined;
  skip: bigint | undefined;
}

/** qemu-img's cvtnum_full(): a size with suffixes within [min, max], in qemu-img's words. */
function cvtnum(name: string, text: string, min: bigint, max: bigint): bigint {
  const r = qemuStrtosz(text);
  if (!r.ok && r.error === 'EINVAL') {
    throw new UsageError(`Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`);
  }
  if (!r.ok || r.value < min || r.value > max) throw new UsageError(`Invalid ${name} specified. Must be between ${min} and ${max}.`);
  return r.value;
}

/** The operands, as qemu-img dd reads them: KEY=VALUE, each of bs, count, if, of, skip; the last one given wins. */
function parseOperands(operands: readonly string[]): DdArgs {
  let input: string | undefined;
  let output: string | undefined;
  let bs = 512n;
  let count: bigint | undefined;
  let skip: bigint | undefined;
  for (const operand of operands) {
    const eq = operand.indexOf('=');
    const key = eq === -1 ? operand : operand.slice(0, eq);
    const value = operand.slice(eq + 1);
    if (eq === -1) throw new UsageError(`unrecognized operand ${key}`);
    switch (key) {
      case 'bs': bs = cvtnum('bs', value, 1n, INT_MAX); break;
      case 'count': count = cvtnum('count', value, 0n, INT64_MAX); break;
      case 'skip': skip = cvtnum('skip', value, 0n, INT64_MAX); break;
      case 'if': input = value; break;
      case 'of': output = value; break;
      default: throw new UsageError(`unrecognized operand ${key}`);
    }
  }
  if (input === undefined || output === undefined) throw new UsageError('Must specify both input and output files');
  return { input, output, bs, count, skip };
}

export async function dd(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, [
    { short: 'f', long: 'format', value: true }, { short: 'O', value: true }, { short: 'U', long: 'force-share' },
    { long: 'image-opts' }, { short: 'h', long: 'help' }, TIMEOUT_OPTION,
  ], 'vdisk dd');
  if (hasFlag(p, 'help')) return print(io, HELP), 0;
  const a = parseOperands(p.positionals);
  const outFormat = lastValue(p, 'O') ?? 'raw';

  let input: BlockNode | undefined;
  let target: BlockNode | undefined;
  try {
    input = await openImage(p, a.input, { readOnly: true });
    const driver = registry.has(outFormat) ? registry.get(outFormat) : undefined;
    if (!driver || driver.kind !== 'format') throw new UsageError('Unknown file format');
    const protocol = registry.protocolFor(a.output);
    if (protocol && protocol !== 'file') throw new UsageError(`${a.output}: error while creating output image: Protocol driver '${protocol}' does not support image creation`);
    if (!driver.create) throw new UsageError(`Format driver '${outFormat}' does not support image creation`);

    // count counts from the start of the input, the skipped blocks included (qemu-img's reading).
    let end = BigInt(input.size);
    if (a.count !== undefined && a.count <= INT64_MAX / a.bs && a.count * a.bs < end) end = a.count * a.bs;
    const skip = a.skip ?? 0n;
    // Past the end, qemu-img warns, as dd(1) does, and makes an empty image.
    const beyond = skip > INT64_MAX / a.bs || skip * a.bs > end;
    const start = beyond ? end : skip * a.bs;

    await refuseSourceAsTarget([input], a.output);
    try {
      // File-backed images hold whole sectors, as QEMU creates them.
      await driver.create({ filename: a.output, size: Number(((end - start + SECTOR - 1n) / SECTOR) * SECTOR), options: {} });
    } catch (err) {
      if (!(err instanceof BlockError)) throw err;
      throw new BlockError(err.code, `${a.output}: error while creating output image: ${err.message}`, err.context, { cause: err });
    }
    target = await openStorage(a.output, { format: outFormat }, storageTimeouts(p));
    if (beyond) io.stderr.write(`vdisk dd: ${a.input}: cannot skip to specified offset\n`);

    // The window of the input to copy, as an image of its own, through the one copy engine:
    // its holes and zeros stay holes in a fresh target.
    const window = new RawNode(input, { offset: Number(start), size: Number(end - start), readOnly: true });
    input = window;
    const job = new ConvertJob({ sources: [window], target, targetIsZero: true, sparseSize: 4096, inFlight: 8, outOfOrder: false });
    const interrupt = (signal: NodeJS.Signals) => job.cancel(new Error(`interrupted by ${signal}`));
    process.once('SIGINT', interrupt).once('SIGTERM', interrupt);
    try {
      await job.start();
    } catch (err) {
      throw ddError(err);
    } finally {
      process.off('SIGINT', interrupt).off('SIGTERM', interrupt);
    }
  } finally {
    await target?.close();
    await input?.close();
  }
  return 0;
}

/** A failed read or write in qemu-img dd's words: which side failed, and why. */
function ddError(err: unknown): unknown {
  if (!(err instanceof BlockError) || !(err.cause instanceof Error)) return err;
  const side = err.context.op === 'read' ? 'reading from input' : err.context.op === 'write' ? 'writing to output' : undefined;
  if (side === undefined) return err;
  return new BlockError(err.code, `error while ${side} image file: ${err.cause.message}`, err.context, { cause: err });
}
