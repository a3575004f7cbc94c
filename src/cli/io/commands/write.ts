import { NotSupportedError } from '../../../core/errors.js';
import { FAILED, imageOf, OK, usage, type CommandDef, type Context, type Status } from '../command.js';
import { Getopt } from '../getopt.js';
import { cvtnum, REQUEST_MAX_BYTES } from '../numbers.js';
import { parsePattern, patternFromFile } from '../pattern.js';
import { formatReport, now } from '../report.js';
import { strerror } from '../strerror.js';
import { inImage, outOfRange, sectorAligned } from './request.js';

const HELP = `
 writes a range of bytes from the given offset

 Example:
 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 -b, -- write to the VM state rather than the virtual disk
 -c, -- write compressed data with blk_write_compressed
 -f, -- use Force Unit Access semantics
 -n, -- with -z, don't allow slow fallback
 -p, -- ignored for backwards compatibility
 -P, -- use different pattern to fill file
 -s, -- use a pattern file to fill the write buffer
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics
 -u, -- with -z, allow unmapping
 -z, -- write zeroes using blk_co_pwrite_zeroes

`;

export const writeCommand: CommandDef = {
  name: 'write',
  altname: 'w',
  argmin: 2,
  argmax: -1,
  args: '[-bcCfnquz] [-P pattern | -s source_file] off len',
  oneline: 'writes a number of bytes at a specified offset',
  help: HELP,
  writes: true,
  run: write,
};

async function write(ctx: Context, argv: string[]): Promise<Status> {
  let vmstate = false, compressed = false, machine = false, fua = false, noFallback = false;
  let quiet = false, mayUnmap = false, zero = false;
  let pattern: number | undefined;
  let sourceFile: string | undefined;
  const opts = new Getopt(argv, 'bcCfnpP:qs:uz');
  for (let o = opts.next(); o; o = opts.next()) {
    if ('error' in o) {
      ctx.printErr(`${o.error}\n`);
      return usage(ctx, writeCommand);
    }
    switch (o.opt) {
      case 'b': vmstate = true; break;
      case 'c': compressed = true; break;
      case 'C': machine = true; break;
      case 'f': fua = true; break;
      case 'n': noFallback = true; break;
      case 'p': break; // ignored, as in qemu-io
      case 'P': {
        const p = parsePattern(ctx, o.arg!);
        if (p === null) return FAILED;
        pattern = p;
        break;
      }
      case 'q': quiet = true; break;
      case 's': sourceFile = o.arg!; break;
      case 'u': mayUnmap = true; break;
      case 'z': zero = true; break;
    }
  }
  if (opts.operands.length !== 2) return usage(ctx, writeCommand);
  // The same checks in the same order as qemu-io, so the same mistake gets the same message.
  const refusal =
    vmstate && zero ? '-b and -z cannot be specified at the same time'
    : fua && (vmstate || compressed) ? '-f and -b or -c cannot be specified at the same time'
    : noFallback && !zero ? '-n requires -z to be specified'
    : mayUnmap && !zero ? '-u requires -z to be specified'
    : Number(zero) + Number(pattern !== undefined) + Number(sourceFile !== undefined) > 1
      ? 'Only one of -z, -P, and -s can be specified at the same time'
    : undefined;
  if (refusal) {
    ctx.print(`${refusal}\n`);
    return FAILED;
  }
  const [offsetArg, countArg] = opts.operands as [string, string];
  const offset = cvtnum(ctx, offsetArg);
  if (offset === null) return FAILED;
  const count = cvtnum(ctx, countArg);
  if (count === null) return FAILED;
  // Only a fast zero write may exceed a single request (qemu 7.2 lifts the limit for -n).
  if (count > REQUEST_MAX_BYTES && !noFallback) {
    ctx.print(`length cannot exceed ${REQUEST_MAX_BYTES} without -n, given ${countArg}\n`);
    return FAILED;
  }
  if ((vmstate || compressed) && !sectorAligned(ctx, offset, count)) return FAILED;

  const node = imageOf(ctx);
  let data: Uint8Array | undefined;
  if (sourceFile !== undefined) {
    // Read even when the request will fail: qemu-io reports a bad source file first.
    const fromFile = await patternFromFile(ctx, sourceFile, Number(count));
    if (!fromFile) return FAILED;
    data = fromFile;
  } else if (!zero && inImage(node, offset, count)) {
    data = new Uint8Array(Number(count)).fill(pattern ?? 0xcd);
  }

  const start = now();
  try {
    // vdisk has no VM state area and no compressed-write path; QEMU's raw driver answers the same.
    if (vmstate) throw new NotSupportedError('no VM state');
    if (!inImage(node, offset, count)) throw outOfRange('write');
    if (compressed) throw new NotSupportedError('compressed writes are not supported');
    if (zero) {
      // -u unmaps even with -d ignore: qemu 7.2 only drops discard requests then.
      await node.writeZeroes(Number(offset), Number(count), { fua, noFallback, mayUnmap });
    } else {
      await node.write(Number(offset), data!, { fua });
    }
  } catch (err) {
    ctx.print(`write failed: ${strerror(err)}\n`);
    return FAILED;
  }
  const elapsed = now() - start;
  if (!quiet) ctx.print(formatReport('wrote', elapsed, Number(offset), Number(count), Number(count), 1, machine));
  return OK;
}
