import { BlockError } from '../core/errors.js';
import { backingChain, findBackingImage, linkName } from '../jobs/backing-chain.js';
import { StreamJob } from '../jobs/stream-job.js';
import { lastValue } from './args.js';
import { print, type CliIo } from './context.js';
import { parseJobArgs, runCliJob } from './job-run.js';
import { openImage } from './open-image.js';
import { ProgressBar } from './progress-bar.js';
import { QemuProgress } from './progress.js';

const HELP = `usage: vdisk stream [-f FMT | --image-opts] [-t CACHE] [--base BASE] [-r RATE] [-p] [-q]
       [--output=human|json] IMAGE
Copies into IMAGE everything it reads from its backing files, then drops its backing link: QEMU's
block-stream job (qemu-img rebase -b '' copies the same). The copy is copy-on-read: only what
IMAGE lacks is written, in whole clusters, all-zero clusters as zero clusters.
  --base BASE  copy only what the backing files above BASE hold, then link IMAGE to BASE
               (named as qemu-img commit -b names it)
  -r RATE      copy at most RATE bytes per second (suffixes k, M, G …)
  -t CACHE     host cache mode: writeback (default), writethrough, none, directsync, unsafe
  -p           show progress (a bar on a terminal, qemu-img's lines elsewhere)
  --output=json  one JSON object per line as the job runs and when it ends (QMP's query-jobs
               names: id, type, status, current-progress, total-progress, error)`;

export async function stream(argv: string[], io: CliIo): Promise<number> {
  const a = parseJobArgs(argv, [{ long: 'base', value: true }], 'vdisk stream');
  if (a === 'help') return print(io, HELP), 0;
  const { parsed: p, image, output, quiet } = a;
  const baseName = lastValue(p, 'base');

  await using top = await openImage(p, image, { readOnly: false });
  const chain = backingChain(top);
  let index = chain.length - 1;
  if (baseName !== undefined) {
    const found = await findBackingImage(top, baseName);
    if (found === undefined) throw new BlockError('EINVAL', `Did not find '${baseName}' in the backing chain of '${image}'`, { op: 'stream' });
    index = found;
  }
  const base = baseName === undefined ? undefined : {
    name: linkName(top, chain[index - 1]!, chain[index]!),
    format: chain[index]!.driver,
  };
  const job = new StreamJob({ image: top, layers: baseName === undefined ? index : index - 1, base, rateLimit: a.rateLimit });

  const wanted = a.progress;
  const tty = (io.stdout as NodeJS.WriteStream).isTTY === true;
  const bar = wanted && tty ? new ProgressBar(io.stdout) : undefined;
  const lines = new QemuProgress(wanted && !tty ? io.stdout : undefined, 1);
  lines.print(0, 100);
  bar?.print(0);
  try {
    await runCliJob(job, io, { type: 'stream', output, quiet, progress: (percent) => (bar ? bar.print(percent) : lines.print(percent, 0)) });
    lines.print(100, 0);
    bar?.print(100);
  } finally {
    lines.end();
    bar?.end();
  }
  return 0;
}
