import { NotSupportedError } from '../../../core/errors.js';
import { FAILED, imageOf, OK, usage, type CommandDef, type Context, type Status } from '../command.js';
import { Getopt } from '../getopt.js';
import { cvtnum, REQUEST_MAX_BYTES } from '../numbers.js';
import { dumpBuffer, matchesPattern, parsePattern } from '../pattern.js';
import { formatReport, now } from '../report.js';
import { strerror } from '../strerror.js';
import { inImage, outOfRange, sectorAligned } from './request.js';

const HELP = `
 reads a range of bytes from the given offset

 Example:
 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file

 Reads a segment of the currently open file, optionally dumping it to the
 standard output stream (with -v option) for subsequent inspection.
 -b, -- read from the VM state rather than the virtual disk
 -C, -- report statistics in a machine parsable format
 -l, -- length for pattern verification (only with -P)
 -p, -- ignored for backwards compatibility
 -P, -- use a pattern to verify read data
 -q, -- quiet mode, do not show I/O statistics
 -s, -- start offset for pattern verification (only with -P)
 -v, -- dump buffer to standard output

`;

export const readCommand: CommandDef = {
  name: 'read',
  altname: 'r',
  argmin: 2,
  argmax: -1,
  args: '[-abCqv] [-P pattern [-s off] [-l len]] off len',
  oneline: 'reads a number of bytes at a specified offset',
  help: HELP,
  run: read,
};

async function read(ctx: Context, argv: string[]): Promise<Status> {
  let machine = false, quiet = false, verbose = false, vmstate = false;
  let pattern: number | undefined;
  let patternOffset: bigint | undefined;
  let patternCount: bigint | undefined;
  const opts = new Getopt(argv, 'bCl:pP:qs:v');
  for (let o = opts.next(); o; o = opts.next()) {
    if ('error' in o) {
      ctx.printErr(`${o.error}\n`);
      return usage(ctx, readCommand);
    }
    switch (o.opt) {
      case 'b': vmstate = true; break;
      case 'C': machine = true; break;
      case 'l': {
        const n = cvtnum(ctx, o.arg!);
        if (n === null) return FAILED;
        patternCount = n;
        break;
      }
      case 'p': break; // ignored, as in qemu-io
      case 'P': {
        const p = parsePattern(ctx, o.arg!);
        if (p === null) return FAILED;
        pattern = p;
        break;
      }
      case 'q': quiet = true; break;
      case 's': {
        const n = cvtnum(ctx, o.arg!);
        if (n === null) return FAILED;
        patternOffset = n;
        break;
      }
      case 'v': verbose = true; break;
    }
  }
  if (opts.operands.length !== 2) return usage(ctx, readCommand);
  const [offsetArg, countArg] = opts.operands as [string, string];
  const offset = cvtnum(ctx, offsetArg);
  if (offset === null) return FAILED;
  const count = cvtnum(ctx, countArg);
  if (count === null) return FAILED;
  if (count > REQUEST_MAX_BYTES) {
    ctx.print(`length cannot exceed ${REQUEST_MAX_BYTES}, given ${countArg}\n`);
    return FAILED;
  }
  if (pattern === undefined && (patternCount !== undefined || patternOffset !== undefined)) return usage(ctx, readCommand);
  const pOffset = patternOffset ?? 0n;
  const pCount = patternCount ?? count - pOffset;
  if (pCount < 0n || pCount + pOffset > count) {
    ctx.print('pattern verification range exceeds end of read data\n');
    return FAILED;
  }
  if (vmstate && !sectorAligned(ctx, offset, count)) return FAILED;

  const node = imageOf(ctx);
  // Allocated only for a request that can succeed: `read 0 2G` of a small image fails at once.
  const buf = !vmstate && inImage(node, offset, count) ? new Uint8Array(Number(count)) : new Uint8Array(0);
  const start = now();
  try {
    // vdisk has no VM state area; QEMU's raw driver answers the same.
    if (vmstate) throw new NotSupportedError('no VM state');
    if (!inImage(node, offset, count)) throw outOfRange('read');
    await node.read(Number(offset), buf);
  } catch (err) {
    ctx.print(`read failed: ${strerror(err)}\n`);
    return FAILED;
  }
  const elapsed = now() - start;

  let status: Status = OK;
  if (pattern !== undefined && !matchesPattern(buf.subarray(Number(pOffset), Number(pOffset + pCount)), pattern)) {
    ctx.print(`Pattern verification failed at offset ${offset + pOffset}, ${pCount} bytes\n`);
    status = FAILED;
  }
  if (quiet) return status;
  if (verbose) dumpBuffer(ctx, buf, Number(offset));
  ctx.print(formatReport('read', elapsed, Number(offset), buf.byteLength, buf.byteLength, 1, machine));
  return status;
}
