import type { BlockNode } from '../core/block-node.js';
import type { Extent } from '../core/types.js';
import { lastValue, parseArgs } from './args.js';
import { print, type CliIo } from './context.js';
import { UsageError } from './errors.js';
import { IMAGE_OPTIONS, onePositional, openImage, outputFormat, TIMEOUT_HELP } from './open-image.js';
import { parseSize } from './sizes.js';
import { ChunkWriter } from './chunk-writer.js';

const HELP = `usage: vdisk map [-f FMT] [--output=human|json] [--start-offset=OFF] [--max-length=LEN] [-U] [--image-opts]
       [--timeout SECONDS] IMAGE
Shows where each range of the image lives, as qemu-img map does.
${TIMEOUT_HELP}`;

/** One row of `qemu-img map --output=json`: a run of extents with the same flags and contiguous host offsets. */
export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
  filename?: string;
}

function mergeable(a: Extent, b: Extent): boolean {
  if (a.depth !== b.depth || a.present !== b.present || a.zero !== b.zero || a.data !== b.data) return false;
  if ((a.hostOffset === undefined) !== (b.hostOffset === undefined) || a.hostFile !== b.hostFile) return false;
  return a.hostOffset === undefined || a.hostOffset + a.length === b.hostOffset;
}

/**
 * Walks the image's extents and yields qemu-img map's merged rows, in batches. Rows are the
 * extents themselves (a copy only where two merge): a big sparse image has tens of thousands.
 */
export async function* mapRows(node: BlockNode, start = 0, length = node.size - start): AsyncIterable<Extent[]> {
  let pending: Extent | undefined;
  let copied = false;
  for await (const list of node.extentLists(start, length)) {
    const rows: Extent[] = [];
    for (const ext of list) {
      if (pending && mergeable(pending, ext)) {
        if (!copied) [pending, copied] = [{ ...pending }, true];
        pending.length += ext.length;
        continue;
      }
      if (pending) rows.push(pending);
      [pending, copied] = [ext, false];
    }
    yield rows;
  }
  if (pending) yield [pending];
}

export function jsonRow(e: Extent): string {
  const offset = e.hostOffset !== undefined ? `, "offset": ${e.hostOffset}` : '';
  return `{ "start": ${e.offset}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}${offset}}`;
}

function hex(n: number): string {
  return n === 0 ? '0' : '0x' + n.toString(16);
}

export async function map(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, [
    ...IMAGE_OPTIONS, { long: 'output', value: true }, { short: 's', long: 'start-offset', value: true },
    { short: 'l', long: 'max-length', value: true }, { short: 'h', long: 'help' },
  ], 'vdisk map');
  if (p.options.has('help')) return print(io, HELP), 0;
  const output = outputFormat(p);
  const image = onePositional(p, 'image');
  const startText = lastValue(p, 'start-offset');
  const lengthText = lastValue(p, 'max-length');
  const start = startText === undefined ? 0 : parseSize(startText, 'offset');
  const maxLength = lengthText === undefined ? undefined : parseSize(lengthText, 'length');
  await using node = await openImage(p, image, { readOnly: true });
  if (start > node.size) throw new UsageError(`--start-offset ${start} is past the end of the image (${node.size} bytes)`);
  const length = Math.min(maxLength ?? Infinity, node.size - start);

  const out = new ChunkWriter(io.stdout);
  if (output === 'human') out.write('Offset          Length          Mapped to       File\n');
  let first = true;
  for await (const rows of mapRows(node, start, length)) for (const e of rows) {
    if (output === 'json') {
      out.write((first ? '[' : ',\n') + jsonRow(e));
      first = false;
    } else if (e.data && !e.zero) {
      if (e.hostOffset === undefined) throw new UsageError('File contains external, encrypted or compressed clusters.');
      out.write(`${hex(e.offset).padEnd(16)}${hex(e.length).padEnd(16)}${hex(e.hostOffset).padEnd(16)}${e.hostFile ?? node.filename}\n`);
    }
  }
  // An empty image is one empty row to qemu-img, not an empty list.
  if (output === 'json') out.write(first ? `[${jsonRow({ offset: start, length: 0, depth: 0, present: false, zero: false, data: false })}]\n` : ']\n');
  out.flush();
  return 0;
}
