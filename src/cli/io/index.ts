import type { BlockNode } from '../../core/block-node.js';
import { namedNode } from '../../drivers/filter/copy-on-read/index.js';
import type { OpenOptions } from '../../registry/index.js';
import type { CliIo } from '../context.js';
import { UsageError } from '../errors.js';
import { describeError } from '../main.js';
import { openStorage, parseImageOpts } from '../open-image.js';
import { commandLines } from './input.js';
import { parseIoArgs, USAGE, type IoOptions } from './options.js';
import { Session } from './session.js';

const PROG = 'vdisk io';

/**
 * `vdisk io [-f FMT] [-r] [-t CACHE] [-n] [-d DISCARD] [-C] [-U] [-c CMD]... [IMAGE]`: qemu-io.
 * The image is opened once; the -c commands run in order (or stdin's, with no -c); the exit
 * status is 1 if any command failed, as with qemu-io 7.2.
 */
export async function io(argv: string[], cli: CliIo): Promise<number> {
  let opts: IoOptions;
  try {
    opts = parseIoArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    cli.stderr.write(`${err.message}\n`);
    return 1;
  }
  if (opts.help) return cli.stdout.write(`${USAGE}\n`), 0;
  if (opts.version) return cli.stdout.write('vdisk io version 0.1.0\n'), 0;

  let node: BlockNode | null = null;
  if (opts.image !== undefined) {
    const opened = await openImage(opts, cli);
    if (!opened) return 1;
    node = opened;
  }
  const session = new Session({ node, discardMode: opts.discardMode, stdout: cli.stdout, stderr: cli.stderr, progName: PROG });
  try {
    if (opts.commands.length > 0) {
      for (const line of opts.commands) {
        await session.runLine(line);
        if (session.quit) break;
      }
    } else {
      for await (const line of commandLines(cli.stdin, cli.stdout)) {
        await session.runLine(line);
        if (session.quit) break;
      }
    }
  } finally {
    if (node && !(await closeImage(node, cli))) session.failed = true;
  }
  return session.failed ? 1 : 0;
}

/**
 * qemu-io flushes the image when it closes it (bdrv_close), so what a script wrote is on
 * stable storage when it exits; a failure, which qemu-io would not mention, is reported here.
 */
async function closeImage(node: BlockNode, cli: CliIo): Promise<boolean> {
  let ok = true;
  try {
    if (node.caps.writable) await node.flush();
  } catch (err) {
    cli.stderr.write(`${PROG}: Failed to flush the image: ${describeError(err)}\n`);
    ok = false;
  }
  await node.close();
  return ok;
}

/** Opens the image as qemu-io does, or reports why not in one line and returns null. */
async function openImage(opts: IoOptions, cli: CliIo): Promise<BlockNode | null> {
  const where = opts.imageOpts ? "can't open" : `can't open device ${opts.image}`;
  if (opts.forceShare && !opts.readOnly) {
    cli.stderr.write(`${PROG}: ${where}: force-share=on can only be used with read-only images\n`);
    return null;
  }
  const options: OpenOptions = {
    format: opts.format,
    readOnly: opts.readOnly,
    cache: opts.cache,
    discard: opts.discardMode,
    copyOnRead: opts.copyOnRead,
    detectZeroes: opts.detectZeroes,
    // -U shares everything with other users; vdisk's nearest is taking no locks at all.
    locking: opts.forceShare ? 'off' : undefined,
  };
  let node: BlockNode;
  try {
    node = await openStorage(opts.imageOpts ? parseImageOpts(opts.image!) : opts.image!, options, opts.timeouts, opts.image);
  } catch (err) {
    cli.stderr.write(`${PROG}: ${where}: ${describeError(err)}\n`);
    return null;
  }
  if (!opts.format && !opts.imageOpts && !opts.image!.startsWith('json:') && namedNode(node).driver === 'raw') {
    // The raw driver refuses writes that would make sector 0 look like another format.
    cli.stderr.write(`WARNING: Image format was not specified for '${opts.image}' and probing guessed raw.\n`
      + '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n'
      + "         Specify the 'raw' format explicitly to remove the restrictions.\n");
  }
  return node;
}
