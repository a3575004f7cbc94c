import type { BlockNode } from '../../../core/block-node.js';
import { BlockError } from '../../../core/errors.js';
import { FAILED, imageOf, OK, usage, type CommandDef, type Context, type Status } from '../command.js';
import { Getopt } from '../getopt.js';
import { cvtnum } from '../numbers.js';
import { strerror } from '../strerror.js';

export const truncateCommand: CommandDef = {
  name: 'truncate',
  altname: 't',
  argmin: 1,
  argmax: 3,
  args: '[-m prealloc_mode] off',
  oneline: 'truncates the current file at the given offset',
  writes: true,
  run: truncate,
};

const MODES = ['off', 'metadata', 'falloc', 'full'] as const;
type Prealloc = (typeof MODES)[number];

async function truncate(ctx: Context, argv: string[]): Promise<Status> {
  let mode: Prealloc = 'off';
  const opts = new Getopt(argv, 'm:');
  for (let o = opts.next(); o; o = opts.next()) {
    if ('error' in o) {
      ctx.printErr(`${o.error}\n`);
      return usage(ctx, truncateCommand);
    }
    if (!MODES.includes(o.arg as Prealloc)) {
      ctx.errorReport(`Invalid preallocation mode '${o.arg}'`);
      return FAILED;
    }
    mode = o.arg as Prealloc;
  }
  // qemu-io uses the first operand and ignores any others.
  const arg = opts.operands[0];
  if (arg === undefined) return usage(ctx, truncateCommand);
  const size = cvtnum(ctx, arg);
  if (size === null) return FAILED;
  const node = imageOf(ctx);
  try {
    await resize(node, size, mode);
  } catch (err) {
    ctx.errorReport(describe(err));
    return FAILED;
  }
  return OK;
}

/*
 * Preallocation as QEMU's file-posix does it for raw images: falloc reserves the new range
 * (it reads as zeros), full writes it; neither can shrink; metadata means nothing to raw.
 */
async function resize(node: BlockNode, size: bigint, mode: Prealloc): Promise<void> {
  if (mode === 'metadata') throw new BlockError('ENOTSUP', 'Unsupported preallocation mode: metadata');
  const old = node.size;
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new BlockError('ERANGE', 'Could not resize file: File too large');
  const target = Number(size);
  if (mode !== 'off' && target < old) throw new BlockError('EINVAL', 'Cannot use preallocation for shrinking files');
  await node.resize(target);
  if (target <= old || mode === 'off') return;
  if (mode === 'falloc') return node.writeZeroes(old, target - old, { allocate: true });
  // full: real zero data, so the range is allocated and reads back as data, not as a hole.
  const chunk = new Uint8Array(Math.min(FULL_CHUNK, target - old));
  for (let at = old; at < target; at += chunk.byteLength) {
    await node.write(at, chunk.subarray(0, Math.min(chunk.byteLength, target - at)));
  }
}

const FULL_CHUNK = 1024 * 1024;

/** One line, QEMU's wording where the error comes from the host. */
function describe(err: unknown): string {
  if (err instanceof BlockError && err.cause !== undefined) return `Could not resize file: ${strerror(err)}`;
  if (err instanceof BlockError) return err.message;
  return `Could not resize file: ${strerror(err)}`;
}
