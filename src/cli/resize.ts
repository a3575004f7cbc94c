import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import { preallocateQcow2 } from '../drivers/format/qcow2/preallocate.js';
import { Qcow2Node } from '../drivers/format/qcow2/qcow2-node.js';
import { hasFlag, lastValue, parseArgs } from './args.js';
import { print, type CliIo } from './context.js';
import { UsageError } from './errors.js';
import { openImage, TIMEOUT_HELP, TIMEOUT_OPTION } from './open-image.js';
import { qemuStrtosz } from './sizes.js';

const HELP = `usage: vdisk resize [-f FMT | --image-opts] [--preallocation=PREALLOC] [--shrink] [-q] [--timeout SECONDS]
       IMAGE [+|-]SIZE
Changes the virtual size of an image, as qemu-img resize does: SIZE sets it, +SIZE grows and
-SIZE shrinks it by that much. Shrinking needs --shrink and loses the data past the new end.
PREALLOC (growing only): off, metadata (qcow2), falloc, full.
${TIMEOUT_HELP}`;

const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'] as const;
type Prealloc = (typeof PREALLOC_MODES)[number];

export async function resize(argv: string[], io: CliIo): Promise<number> {
  if (argv.includes('-h') || argv.includes('--help')) return print(io, HELP), 0;
  // As qemu-img does, the size is taken off the end before the options are read, so that
  // "-1G" is a size and not an option.
  if (argv.length < 2) throw new UsageError('Not enough arguments');
  const sizeText = argv[argv.length - 1]!;
  const p = parseArgs(argv.slice(0, -1), [
    { short: 'f', long: 'format', value: true }, { long: 'image-opts' }, { long: 'preallocation', value: true },
    { long: 'shrink' }, { short: 'q', long: 'quiet' }, TIMEOUT_OPTION,
  ], 'vdisk resize');
  const prealloc = (lastValue(p, 'preallocation') ?? 'off') as Prealloc;
  if (!PREALLOC_MODES.includes(prealloc)) throw new UsageError(`Invalid preallocation mode '${prealloc}'`);
  if (p.positionals.length !== 1) throw new UsageError('Expecting image file name and size');
  const change = parseChange(sizeText);

  await using node = await openImage(p, p.positionals[0]!, { readOnly: false });
  const current = node.size;
  // qemu-img computes in int64: a size of 2^63 or more wraps negative.
  const total = change.relative === 0 ? change.amount : BigInt(current) + BigInt(change.relative) * change.amount;
  if (total <= 0n) throw new UsageError('New image size must be positive');
  if (total <= BigInt(current) && prealloc !== 'off') throw new UsageError('Preallocation can only be used for growing images');
  if (total < BigInt(current) && !hasFlag(p, 'shrink')) {
    io.stderr.write('vdisk resize: Use the --shrink option to perform a shrink operation.\n');
    throw new UsageError("warning: Shrinking an image will delete all data beyond the shrunken image's end. "
      + 'Before performing such an operation, make sure there is no important data there.');
  }
  if (total > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new BlockError('ERANGE', `Could not resize image: ${total} bytes is more than vdisk can address (2^53 - 1)`, { op: 'resize' });
  }
  const size = Number(total);
  if (prealloc === 'metadata' && !(node instanceof Qcow2Node)) throw new BlockError('ENOTSUP', 'Unsupported preallocation mode: metadata', { op: 'resize' });
  await resizeImage(node, size, prealloc);
  await node.flush();
  if (!hasFlag(p, 'quiet')) print(io, 'Image resized.');
  return 0;
}

/** `[+|-]SIZE`: the amount as qemu_strtosz() reads it (before the image opens, as in qemu-img). */
function parseChange(text: string): { relative: -1 | 0 | 1; amount: bigint } {
  const relative = text.startsWith('+') ? 1 : text.startsWith('-') ? -1 : 0;
  const digits = relative === 0 ? text : text.slice(1);
  const r = qemuStrtosz(digits);
  if (!r.ok && r.error === 'ERANGE') throw new UsageError(`Value '${digits}' is out of range for parameter 'size'`);
  if (!r.ok) {
    throw new UsageError("Parameter 'size' expects a non-negative number below 2^64 "
      + '(optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta- and exabytes)');
  }
  return { relative, amount: BigInt.asIntN(64, r.value) };
}

/**
 * Resizes as QEMU's truncate does: a grown range preallocated as asked, and reading zeros
 * rather than the backing file's data where the backing file reaches into it (QEMU's
 * BDRV_REQ_ZERO_WRITE for growing an image whose backing file is longer).
 */
export async function resizeImage(node: BlockNode, to: number, prealloc: Prealloc = 'off'): Promise<void> {
  const from = node.size;
  await node.resize(to);
  if (to <= from) return;
  if (prealloc !== 'off') {
    if (node instanceof Qcow2Node) await preallocateQcow2(node, from, to - from, prealloc);
    else if (prealloc === 'falloc') await node.writeZeroes(from, to - from, { allocate: true });
    else await writeZeroData(node, from, to);
  }
  const backing = node.backing;
  if (backing && backing.size > from) await node.writeZeroes(from, to - from);
}

/** preallocation=full for formats without their own: zeros written as data. */
async function writeZeroData(node: BlockNode, from: number, to: number): Promise<void> {
  const zeros = new Uint8Array(Math.min(1024 * 1024, to - from));
  for (let at = from; at < to; at += zeros.byteLength) await node.write(at, zeros.subarray(0, Math.min(zeros.byteLength, to - at)));
}
