import type { BlockNode } from '../core/block-node.js';
import { CompareIoError, compareImages, type CompareResult } from '../jobs/compare.js';
import { hasFlag, lastValue, parseArgs } from './args.js';
import { print, type CliIo } from './context.js';
import { UsageError } from './errors.js';
import { describeError } from './main.js';
import { cacheMode, openImage, TIMEOUT_HELP, TIMEOUT_OPTION } from './open-image.js';
import { QemuProgress } from './progress.js';

const HELP = `usage: vdisk compare [-f FMT] [-F FMT] [-T SRC_CACHE] [-p] [-q] [-s] [-U] [--image-opts] [--timeout SECONDS]
       IMAGE1 IMAGE2
Checks that two images read the same, as qemu-img compare does; a longer image's tail must read as
zeros unless -s (strict: sizes and block status must match too).
Exit status: 0 identical, 1 different, 2 an image did not open, 3 block status failed, 4 a read failed.
${TIMEOUT_HELP}`;

/** qemu-img compare's exit statuses. */
const EXIT = { identical: 0, different: 1, open: 2, status: 3, read: 4 } as const;

export async function compare(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, [
    { short: 'f', long: 'format', value: true }, { short: 'F', value: true }, { short: 'T', value: true },
    { short: 'p' }, { short: 'q' }, { short: 's' }, { short: 'U', long: 'force-share' }, { long: 'image-opts' },
    { short: 'h', long: 'help' }, TIMEOUT_OPTION,
  ], 'vdisk compare');
  if (hasFlag(p, 'help')) return print(io, HELP), 0;
  if (p.positionals.length !== 2) throw new UsageError('Expecting two image file names');
  const [name1, name2] = p.positionals as [string, string];
  const quiet = hasFlag(p, 'q');
  const progress = new QemuProgress(hasFlag(p, 'p') && !quiet ? io.stdout : undefined, 2);
  const fail = (status: number, err: unknown): number => {
    io.stderr.write(`vdisk compare: ${describeError(err)}\n`);
    return status;
  };

  const images: BlockNode[] = [];
  try {
    const cache = cacheMode(lastValue(p, 'T'));
    try {
      images.push(await openImage(p, name1, { readOnly: true, cache }));
      // -F names the second image's format; without it that image is probed.
      images.push(await openImage(p, name2, { readOnly: true, cache, format: lastValue(p, 'F') }));
    } catch (err) {
      if (err instanceof UsageError) throw err;
      return fail(EXIT.open, err);
    }
    const [a, b] = images as [BlockNode, BlockNode];
    const base = Math.max(a.size, b.size);
    progress.print(0, 100);
    const result = await compareImages(a, b, {
      strict: hasFlag(p, 's'),
      names: [name1, name2],
      onProgress: (bytes) => progress.print((bytes / base) * 100, 100),
    });
    if (result.kind === 'identical') progress.print(100, 0);
    const { lines, status } = report(result);
    if (!quiet) for (const line of lines) print(io, line);
    return status;
  } catch (err) {
    if (err instanceof CompareIoError) return fail(err.stage === 'read' ? EXIT.read : EXIT.status, err);
    throw err;
  } finally {
    progress.end();
    for (const image of images) await image.close();
  }
}

/** What qemu-img compare prints for a result, and its exit status. */
function report(result: CompareResult): { lines: string[]; status: number } {
  const warning = 'sizeMismatch' in result && result.sizeMismatch ? ['Warning: Image size mismatch!'] : [];
  switch (result.kind) {
    case 'strict-size':
      return { lines: ['Strict mode: Image size mismatch!'], status: EXIT.different };
    case 'strict-status':
      return { lines: [`Strict mode: Offset ${result.offset} block status mismatch!`], status: EXIT.different };
    case 'content':
      return { lines: [...warning, `Content mismatch at offset ${result.offset}!`], status: EXIT.different };
    case 'identical':
      return { lines: [...warning, 'Images are identical.'], status: EXIT.identical };
  }
}
