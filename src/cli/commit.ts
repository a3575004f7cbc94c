import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import { backingChain, findBackingImage } from '../jobs/backing-chain.js';
import { CommitJob } from '../jobs/commit-job.js';
import { parseFilename, registry, type NodeSpec } from '../registry/index.js';
import { hasFlag, lastValue, type Parsed } from './args.js';
import { print, type CliIo } from './context.js';
import { parseJobArgs, runCliJob } from './job-run.js';
import { openImage, parseImageOpts } from './open-image.js';
import { QemuProgress } from './progress.js';

const HELP = `usage: vdisk commit [-f FMT | --image-opts] [-t CACHE] [-b BASE] [-r RATE] [-d] [-p] [-q]
       [--output=human|json] IMAGE
Writes what IMAGE holds into its backing file, as qemu-img commit does, then empties IMAGE so
that it reads through to the backing file again. Zeros (explicit ones, and data that is all
zeros) become zero clusters or holes in the backing file, never zero-filled data.
  -b BASE   commit into BASE, an image further down the backing chain: everything above it goes
            down; implies -d (the images between would read wrongly once IMAGE is emptied)
  -d        do not empty IMAGE afterwards
  -r RATE   copy at most RATE bytes of data per second (suffixes k, M, G …)
  -t CACHE  host cache mode of every image: writeback, writethrough, none, directsync, unsafe;
            default: writeback, but none (O_DIRECT) for the base's file
  -p        show progress; -q: print nothing on success
  --output=json  one JSON object per line as the commit runs and when it ends (QMP's
            query-jobs names: id, type, status, current-progress, total-progress, error)`;

export async function commit(argv: string[], io: CliIo): Promise<number> {
  const a = parseJobArgs(argv, [{ short: 'b', value: true }, { short: 'd' }], 'vdisk commit');
  if (a === 'help') return print(io, HELP), 0;
  const { parsed: p, image, output, quiet } = a;
  const baseName = lastValue(p, 'b');
  // -b implies -d: with the images between left behind, only a full top reads right.
  const keepTop = hasFlag(p, 'd') || baseName !== undefined;

  const { top, base, layers } = await openForCommit(p, image, baseName);
  const progress = new QemuProgress(a.progress ? io.stdout : undefined, 1);
  try {
    progress.print(0, 100);
    const job = new CommitJob({ top, base, layers, keepTop, rateLimit: a.rateLimit });
    await runCliJob(job, io, { type: 'commit', output, quiet, progress: (percent) => progress.print(percent, 0) });
    progress.print(100, 0);
  } finally {
    progress.end();
    await top.close();
    await base.close();
  }
  if (!quiet && output === 'human') print(io, 'Image committed.');
  return 0;
}

interface CommitNodes {
  /** IMAGE, writable, with its backing chain cut just above the base. */
  top: BlockNode;
  /** The base, writable, with its own backing chain below it. */
  base: BlockNode;
  layers: number;
}

/**
 * Opens IMAGE and its base for a commit. The base is opened for writing on its own, which its
 * read-only place in IMAGE's chain would forbid (the image locks keep out other writers; QEMU
 * reopens the base read-write instead). So the chain is looked at first, read-only, and IMAGE
 * then opened again with its chain ending just above the base, the images between read-only.
 */
async function openForCommit(p: Parsed, image: string, baseName: string | undefined): Promise<CommitNodes> {
  let topSpec: NodeSpec;
  let baseFile: string;
  let baseFormat: string;
  let layers: number;
  {
    // QEMU's default format for commit is probing, as everywhere else.
    await using probe = await openImage(p, image, { readOnly: true });
    const chain = backingChain(probe);
    const index = baseName === undefined ? (chain.length > 1 ? 1 : undefined) : await findBackingImage(probe, baseName);
    if (index === undefined) {
      if (baseName !== undefined) throw new BlockError('EINVAL', `Did not find '${baseName}' in the backing chain of '${image}'`, { op: 'commit' });
      throw new BlockError('EINVAL', 'Image does not have a backing file', { op: 'commit', path: image });
    }
    const base = chain[index]!;
    [baseFile, baseFormat, layers] = [base.filename, base.driver, index];
    // The images between, innermost first, each read-only and ending the chain above the base.
    let below: NodeSpec | null = null;
    for (let i = index - 1; i >= 1; i--) {
      const node = chain[i]!;
      below = { driver: node.driver, 'read-only': true, file: fileSpec(node.file?.filename ?? node.filename), backing: below };
    }
    topSpec = { ...ownSpec(p, image, probe.driver), backing: below };
  }
  const top = await openImage(p, `json:${JSON.stringify(topSpec)}`);
  try {
    // The base by its file name, whatever form IMAGE was given in.
    const plain: Parsed = { ...p, options: new Map([...p.options].filter(([key]) => key !== 'image-opts' && key !== 'format')) };
    // Without -t, the base is written with O_DIRECT: its data must be on the disk before the
    // commit ends anyway, and through the page cache it is written twice (a copy into new
    // pages, then their writeback, ~300 MB/s for newly allocated ext4 blocks on the virtio disk
    // measured, against 1.1-1.6 GB/s direct). It also leaves the page cache to the guest's
    // working set. Where the file system refuses O_DIRECT, cache=none drops pages instead.
    const cache = lastValue(p, 'cache') === undefined ? { cache: 'none' as const } : {};
    const base = await openImage(plain, baseFile, { format: baseFormat, ...cache });
    return { top, base, layers };
  } catch (err) {
    await top.close();
    throw err;
  }
}

/** The spec IMAGE was opened by, as an object to which a `backing` can be added. */
function ownSpec(p: Parsed, image: string, format: string): NodeSpec {
  if (hasFlag(p, 'image-opts')) return parseImageOpts(image);
  const parsed = parseFilename(image);
  if (typeof parsed !== 'string') return parsed;
  return { driver: format, file: fileSpec(parsed) };
}

/** A protocol node for a name: a URI its protocol claims, or a local file. */
function fileSpec(name: string): NodeSpec {
  return { driver: registry.protocolFor(name) ?? 'file', filename: name };
}
