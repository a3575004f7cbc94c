import type { BlockNode } from '../../../core/block-node.js';
import { humanSize } from '../../sizes.js';
import { FAILED, imageOf, OK, type CommandDef, type Context, type Status } from '../command.js';
import { cvtnum } from '../numbers.js';
import { strerror } from '../strerror.js';

/*
 * `alloc` and `map`: QEMU's bdrv_is_allocated(), "does the top image itself hold this range?"
 * (data or zero clusters of its own, as opposed to falling through to a backing file). In
 * vdisk's terms an extent is allocated when present at depth 0. A raw image holds every byte.
 */

/** The allocation state of the run at offset (clipped to maxLength): [allocated, length]. */
async function allocatedRun(node: BlockNode, offset: number, maxLength: number): Promise<[boolean, number]> {
  const ext = await node.blockStatus(offset, maxLength);
  return [ext.present && ext.depth === 0, ext.length];
}

export const allocCommand: CommandDef = {
  name: 'alloc',
  altname: 'a',
  argmin: 1,
  argmax: 2,
  args: 'offset [count]',
  oneline: 'checks if offset is allocated in the file',
  run: alloc,
};

async function alloc(ctx: Context, argv: string[]): Promise<Status> {
  const start = cvtnum(ctx, argv[1]!);
  if (start === null) return FAILED;
  let count = 512n;
  if (argv.length === 3) {
    const c = cvtnum(ctx, argv[2]!);
    if (c === null) return FAILED;
    count = c;
  }
  const node = imageOf(ctx);
  // qemu stops at the end of the image and shortens the count to what it looked at.
  const size = BigInt(node.size);
  const len = Number(start >= size ? 0n : count < size - start ? count : size - start);
  let offset = Number(start);
  let allocated = 0;
  for (let remaining = len; remaining > 0;) {
    let run: [boolean, number];
    try {
      run = await allocatedRun(node, offset, remaining);
    } catch (err) {
      ctx.print(`is_allocated failed: ${strerror(err)}\n`);
      return FAILED;
    }
    if (run[0]) allocated += run[1];
    offset += run[1];
    remaining -= run[1];
  }
  ctx.print(`${allocated}/${len} bytes allocated at offset ${humanSize(Number(start))}\n`);
  return OK;
}

export const mapCommand: CommandDef = {
  name: 'map',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'prints the allocated areas of a file',
  run: map,
};

async function map(ctx: Context): Promise<Status> {
  const node = imageOf(ctx);
  const lines: string[] = [];
  for (let offset = 0; offset < node.size;) {
    // One line per maximal run of the same state, as qemu's map_is_allocated() merges them.
    let state: boolean;
    let length: number;
    try {
      [state, length] = await allocatedRun(node, offset, node.size - offset);
      while (offset + length < node.size) {
        const [next, more] = await allocatedRun(node, offset + length, node.size - offset - length);
        if (next !== state) break;
        length += more;
      }
    } catch (err) {
      ctx.print(lines.join(''));
      ctx.errorReport(`Failed to get allocation status: ${strerror(err)}`);
      return FAILED;
    }
    const what = state ? '    allocated' : 'not allocated';
    lines.push(`${humanSize(length)} (0x${length.toString(16)}) bytes ${what} at offset ${humanSize(offset)} (0x${offset.toString(16)})\n`);
    if (lines.length === 4096) ctx.print(lines.splice(0).join(''));
    offset += length;
  }
  ctx.print(lines.join(''));
  return OK;
}
