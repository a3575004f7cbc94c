import path from 'node:path';
import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import { changeBackingFile, checkBackingChange } from '../drivers/format/qcow2/backing-link.js';
import { Qcow2Node } from '../drivers/format/qcow2/qcow2-node.js';
import { RebaseJob } from '../jobs/rebase.js';
import { parseFilename, registry } from '../registry/index.js';
import { combinePath } from '../registry/registry.js';
import { hasFlag, lastValue, parseArgs, type Parsed } from './args.js';
import { print, type CliIo } from './context.js';
import { UsageError } from './errors.js';
import { describeError } from './main.js';
import { cacheMode, openImage, openStorage, storageTimeouts, TIMEOUT_HELP, TIMEOUT_OPTION } from './open-image.js';
import { openWithoutBacking } from './open-probe.js';
import { QemuProgress } from './progress.js';

const HELP = `usage: vdisk rebase [-f FMT | --image-opts] [-t CACHE] [-T SRC_CACHE] [-p] [-q] [-U] [-u] [--timeout SECONDS]
       -b BACKING [-F BACKING_FMT] IMAGE
Changes the backing file of an image, as qemu-img rebase does. Safe mode (the default) first
writes into IMAGE whatever reads differently through the new backing file, so IMAGE reads the
same afterwards; -u (unsafe) only changes the link. -b '' removes the backing file.
${TIMEOUT_HELP}`;

export async function rebase(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, [
    { short: 'f', long: 'format', value: true }, { long: 'image-opts' }, { short: 't', long: 'cache', value: true },
    { short: 'T', value: true }, { short: 'b', long: 'backing', value: true }, { short: 'F', long: 'backing-format', value: true },
    { short: 'u', long: 'unsafe' }, { short: 'U', long: 'force-share' }, { short: 'p', long: 'progress' },
    { short: 'q', long: 'quiet' }, { short: 'h', long: 'help' }, TIMEOUT_OPTION,
  ], 'vdisk rebase');
  if (hasFlag(p, 'help')) return print(io, HELP), 0;
  const unsafe = hasFlag(p, 'unsafe');
  const backing = lastValue(p, 'backing');
  const backingFormat = lastValue(p, 'backing-format');
  if (p.positionals.length !== 1) throw new UsageError('Expecting one image file name');
  if (!unsafe && backing === undefined) throw new UsageError('Must specify backing file (-b) or use unsafe mode (-u)');
  const quiet = hasFlag(p, 'quiet');
  const progress = new QemuProgress(hasFlag(p, 'progress') && !quiet ? io.stdout : undefined, 2);
  const srcCache = cacheMode(lastValue(p, 'T'));
  // Unsafe mode does not open the old backing file: it may be gone (the reason to rebase -u).
  const image = unsafe ? await openWithoutBacking(p, p.positionals[0]!, { readOnly: false }) : await openImage(p, p.positionals[0]!, { readOnly: false });
  let opened: BlockNode | undefined;
  try {
    progress.print(0, 100);
    if (backingFormat !== undefined && !(registry.has(backingFormat) && registry.get(backingFormat).kind !== 'filter')) {
      throw new UsageError(`Invalid format name: '${backingFormat}'`);
    }
    // An empty name (or -u without -b) removes the backing file.
    const name = backing === '' ? undefined : backing;
    if (!(image instanceof Qcow2Node)) throw new BlockError('ENOTSUP', `Could not change the backing file to '${backing ?? ''}': Operation not supported`, { op: 'rebase' });
    // Refused now rather than after the copy, which would then have been for nothing.
    checkBackingChange(image, name, backingFormat);
    if (!unsafe) {
      const found = name === undefined ? undefined : await newBackingFile(p, image, name, backingFormat, srcCache);
      opened = found?.opened ? found.node : undefined;
      const job = new RebaseJob({ image, newBacking: found?.node, sharedDepth: found?.depth });
      const reporting = (async () => {
        for await (const e of job.events()) if (e.type === 'progress' && e.total > 0) progress.print((100 * e.done) / e.total, 0);
      })();
      try {
        await job.start();
      } finally {
        await reporting;
      }
    }
    await changeBackingFile(image, name, backingFormat);
    progress.print(100, 0);
  } finally {
    progress.end();
    await opened?.close();
    await image.close();
  }
  return 0;
}

/**
 * The new backing file, opened read-only as the image will open it (relative to the image's
 * directory). If it is already in the image's backing chain, that node is used, and `depth`
 * says how far down it sits: the chain reads the same from there on (QEMU's prefix_chain_bs).
 */
async function newBackingFile(p: Parsed, image: BlockNode, name: string, format: string | undefined, cache: ReturnType<typeof cacheMode>):
Promise<{ node: BlockNode; depth?: number; opened: boolean }> {
  const target = typeof parseFilename(name) !== 'string' || registry.protocolFor(name) ? name : combinePath(image.filename, name);
  let depth = 1;
  for (let node = image.backing; node; node = node.backing, depth++) {
    if (samePath(node.filename, target)) return { node, depth, opened: false };
  }
  try {
    const node = await openStorage(target, { format, readOnly: true, cache, locking: hasFlag(p, 'force-share') ? 'off' : undefined }, storageTimeouts(p));
    return { node, opened: true };
  } catch (err) {
    throw new BlockError((err as BlockError).code ?? 'EIO', `Could not open new backing file '${name}': ${describeError(err)}`, { op: 'rebase' }, { cause: err });
  }
}

function samePath(a: string, b: string): boolean {
  return registry.protocolFor(a) || registry.protocolFor(b) ? a === b : path.resolve(a) === path.resolve(b);
}

