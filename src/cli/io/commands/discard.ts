import { FAILED, imageOf, OK, usage, type CommandDef, type Context, type Status } from '../command.js';
import { Getopt } from '../getopt.js';
import { cvtnum, REQUEST_MAX_BYTES } from '../numbers.js';
import { formatReport, now } from '../report.js';
import { strerror } from '../strerror.js';
import { inImage, outOfRange } from './request.js';

const HELP = `
 discards a range of bytes from the given offset

 Example:
 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file

 Discards a segment of the currently open file.
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics

`;

export const discardCommand: CommandDef = {
  name: 'discard',
  altname: 'd',
  argmin: 2,
  argmax: -1,
  args: '[-Cq] off len',
  oneline: 'discards a number of bytes at a specified offset',
  help: HELP,
  writes: true,
  run: discard,
};

async function discard(ctx: Context, argv: string[]): Promise<Status> {
  let machine = false, quiet = false;
  const opts = new Getopt(argv, 'Cq');
  for (let o = opts.next(); o; o = opts.next()) {
    if ('error' in o) {
      ctx.printErr(`${o.error}\n`);
      return usage(ctx, discardCommand);
    }
    if (o.opt === 'C') machine = true;
    else quiet = true;
  }
  if (opts.operands.length !== 2) return usage(ctx, discardCommand);
  const [offsetArg, bytesArg] = opts.operands as [string, string];
  const offset = cvtnum(ctx, offsetArg);
  if (offset === null) return FAILED;
  const bytes = cvtnum(ctx, bytesArg);
  if (bytes === null) return FAILED;
  if (bytes > REQUEST_MAX_BYTES) {
    ctx.print(`length cannot exceed ${REQUEST_MAX_BYTES}, given ${bytesArg}\n`);
    return FAILED;
  }
  const node = imageOf(ctx);
  const start = now();
  try {
    if (!inImage(node, offset, bytes)) throw outOfRange('discard');
    // discard=ignore (-d ignore): the request succeeds and nothing is deallocated, as in QEMU.
    if (ctx.discardMode === 'unmap') await node.discard(Number(offset), Number(bytes));
  } catch (err) {
    ctx.print(`discard failed: ${strerror(err)}\n`);
    return FAILED;
  }
  const elapsed = now() - start;
  if (!quiet) ctx.print(formatReport('discard', elapsed, Number(offset), Number(bytes), Number(bytes), 1, machine));
  return OK;
}
