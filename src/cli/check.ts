import type { BlockNode } from '../core/block-node.js';
import { CheckFailedError, type CheckResult } from '../drivers/format/qcow2/check.js';
import { lastValue, parseArgs } from './args.js';
import { print, type CliIo } from './context.js';
import { UsageError } from './errors.js';
import { IMAGE_OPTIONS, onePositional, openImage, outputFormat, TIMEOUT_HELP } from './open-image.js';
import { qemuJson } from '../core/qemu-format.js';

const HELP = `usage: vdisk check [-f FMT] [-r leaks|all] [--output=human|json] [-q] [-U] [--timeout SECONDS] IMAGE
Checks an image's metadata for consistency, as qemu-img check does.
Exit status: 0 consistent, 2 corrupted, 3 leaked clusters only, 63 format has no checks.
${TIMEOUT_HELP}`;

/** Exit statuses of qemu-img check. */
const EXIT = { clean: 0, errors: 1, corrupt: 2, leaks: 3, unsupported: 63 } as const;

interface Checkable extends BlockNode {
  check(fix: 'none' | 'leaks' | 'all'): Promise<CheckResult>;
}

function isCheckable(node: BlockNode): node is Checkable {
  return typeof (node as Partial<Checkable>).check === 'function';
}

function humanReport(r: CheckResult): string[] {
  const lines: string[] = [];
  if (!(r.corruptions || r.leaks || r.checkErrors)) lines.push('No errors were found on the image.');
  if (r.corruptions) lines.push('', `${r.corruptions} errors were found on the image.`, 'Data may be corrupted, or further writes to the image may corrupt it.');
  if (r.leaks) lines.push('', `${r.leaks} leaked clusters were found on the image.`, 'This means waste of disk space, but no harm to data.');
  if (r.checkErrors) lines.push('', `${r.checkErrors} internal errors have occurred during the check.`);
  if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
    const pct = (n: number, d: number) => ((n * 100) / d).toFixed(2);
    lines.push(`${r.allocatedClusters}/${r.totalClusters} = ${pct(r.allocatedClusters, r.totalClusters)}% allocated, `
      + `${pct(r.fragmentedClusters, r.allocatedClusters)}% fragmented, ${pct(r.compressedClusters, r.allocatedClusters)}% compressed clusters`);
  }
  if (r.imageEndOffset) lines.push(`Image end offset: ${r.imageEndOffset}`);
  return lines;
}

/** The fields of qemu-img check --output=json; counters that are zero are left out, as QEMU does. */
function jsonReport(r: CheckResult, node: BlockNode, fixed: { leaks: number; corruptions: number }): Record<string, unknown> {
  const out: Record<string, unknown> = { 'image-end-offset': r.imageEndOffset };
  if (r.totalClusters) out['total-clusters'] = r.totalClusters;
  if (r.corruptions) out.corruptions = r.corruptions;
  if (r.leaks) out.leaks = r.leaks;
  if (fixed.corruptions) out['corruptions-fixed'] = fixed.corruptions;
  if (fixed.leaks) out['leaks-fixed'] = fixed.leaks;
  out['check-errors'] = r.checkErrors;
  if (r.allocatedClusters) out['allocated-clusters'] = r.allocatedClusters;
  out.filename = node.filename;
  out.format = node.driver;
  if (r.fragmentedClusters) out['fragmented-clusters'] = r.fragmentedClusters;
  if (r.compressedClusters) out['compressed-clusters'] = r.compressedClusters;
  return out;
}

export async function check(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, [...IMAGE_OPTIONS, { long: 'output', value: true }, { short: 'r', long: 'repair', value: true },
    { short: 'q', long: 'quiet' }, { short: 'h', long: 'help' }], 'vdisk check');
  if (p.options.has('help')) return print(io, HELP), 0;
  const output = outputFormat(p);
  const image = onePositional(p, 'image');
  const repair = lastValue(p, 'repair');
  if (repair !== undefined && repair !== 'leaks' && repair !== 'all') throw new UsageError(`Unknown option value for -r (expecting 'leaks' or 'all'): ${repair}`);
  const fix = repair ?? 'none';
  const quiet = p.options.has('quiet');
  await using node = await openImage(p, image, { readOnly: fix === 'none', check: true });
  if (!isCheckable(node)) {
    io.stderr.write('vdisk check: This image format does not support checks\n');
    return EXIT.unsupported;
  }
  let result: CheckResult;
  try {
    result = await node.check(fix);
  } catch (err) {
    // What the check said before it failed, then (from main) the error itself.
    if (err instanceof CheckFailedError) for (const m of err.messages) io.stderr.write(m + '\n');
    throw err;
  }
  for (const m of result.messages) io.stderr.write(m + '\n');
  const fixed = { leaks: result.leaksFixed, corruptions: result.corruptionsFixed };
  if (fixed.leaks || fixed.corruptions) {
    if (output === 'human' && !quiet) {
      print(io, ['The following inconsistencies were found and repaired:', '', `    ${fixed.leaks} leaked clusters`,
        `    ${fixed.corruptions} corruptions`, '', 'Double checking the fixed image now...'].join('\n'));
    }
    result = await node.check('none');
    for (const m of result.messages) io.stderr.write(m + '\n');
  }
  if (!quiet) print(io, output === 'json' ? qemuJson(jsonReport(result, node, fixed)) : humanReport(result).join('\n'));
  if (result.checkErrors) {
    // qemu-img's last word when the check itself could not read everything.
    io.stderr.write('vdisk check: Check failed\n');
    return EXIT.errors;
  }
  if (result.corruptions) return EXIT.corrupt;
  if (result.leaks) return EXIT.leaks;
  return EXIT.clean;
}
