import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import { nativeStatus } from '../native/index.js';
import { registry } from '../registry/index.js';
import { combinePath } from '../registry/registry.js';
import { hasFlag, parseArgs } from './args.js';
import { print, type CliIo } from './context.js';
import { withDeadline } from './deadline.js';
import { UsageError } from './errors.js';
import { IMAGE_OPTIONS, onePositional, openImage, outputFormat, storageTimeouts, TIMEOUT_HELP } from './open-image.js';
import { openWithoutBacking } from './open-probe.js';
import { qemuJson, sizeToStr } from '../core/qemu-format.js';

const HELP = `usage: vdisk info [-f FMT] [--output=human|json] [--backing-chain | --probe] [-U] [-t CACHE] [--image-opts]
       [--timeout SECONDS] IMAGE
Shows an image's format, sizes and format-specific facts, as qemu-img info does.
  --probe     read as little as possible: the format's header, without opening the backing
              chain (the backing file is named, not looked at)
${TIMEOUT_HELP}`;

/** The fields of qemu-img info --output=json; formats add theirs (cluster-size, snapshots, …). */
export interface ImageInfo {
  'virtual-size': number;
  filename: string;
  format: string;
  'actual-size'?: number;
  'dirty-flag'?: boolean;
  'cluster-size'?: number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: Record<string, unknown>[];
  'format-specific'?: { type: string; data: Record<string, unknown> };
  /** Provided by the format's human snapshot table, not part of the JSON. */
  [key: string]: unknown;
}

export async function collectInfo(node: BlockNode): Promise<ImageInfo> {
  const actual = await node.allocatedSize();
  const specific = node.formatSpecific();
  const image = node.imageInfo();
  return {
    'virtual-size': node.size,
    filename: node.filename,
    format: node.driver,
    ...(actual !== undefined ? { 'actual-size': actual } : {}),
    ...(node.hasDriverInfo() || 'dirty-flag' in image ? { 'dirty-flag': false } : {}),
    ...image,
    ...(specific ? { 'format-specific': { type: node.driver, data: specific } } : {}),
  };
}

/** What is switched off when the native addon did not load; empty when all is well. */
export function featuresOff(): string[] {
  return nativeStatus.loaded ? [] : ['holes (everything reads as data)', 'fast zeroing and hole punching', 'image locking', 'cache=none'];
}

/** QEMU's dump of a format-specific object: `key words: value`, nested objects indented. */
function dumpSpecific(data: Record<string, unknown>, indent: string): string[] {
  const lines: string[] = [];
  for (const [key, value] of Object.entries(data)) {
    const name = key.replace(/-/g, ' ');
    if (value !== null && typeof value === 'object') lines.push(`${indent}${name}:`, ...dumpSpecific(value as Record<string, unknown>, indent + '    '));
    else lines.push(`${indent}${name}: ${String(value)}`);
  }
  return lines;
}

export function humanInfo(info: ImageInfo, snapshotLines: string[] = []): string {
  const lines = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${sizeToStr(info['virtual-size'])} (${info['virtual-size']} bytes)`,
    `disk size: ${info['actual-size'] === undefined ? 'unavailable' : sizeToStr(info['actual-size'])}`,
  ];
  if (info['cluster-size'] !== undefined) lines.push(`cluster_size: ${info['cluster-size']}`);
  if (info['dirty-flag']) lines.push('cleanly shut down: no');
  const backing = info['backing-filename'];
  if (backing !== undefined) {
    const full = info['full-backing-filename'];
    const actual = full === undefined ? ' (cannot determine actual path)' : full !== backing ? ` (actual path: ${full})` : '';
    lines.push(`backing file: ${backing}${actual}`);
  }
  if (info['backing-filename-format'] !== undefined) lines.push(`backing file format: ${info['backing-filename-format']}`);
  if (snapshotLines.length > 0) lines.push('Snapshot list:', ...snapshotLines);
  const specific = info['format-specific'];
  if (specific) lines.push('Format specific information:', ...dumpSpecific(specific.data, '    '));
  const off = featuresOff();
  if (off.length > 0) lines.push(`vdisk native addon not loaded (${nativeStatus.reason ?? 'unknown reason'}); off: ${off.join(', ')}`);
  return lines.join('\n');
}

/**
 * The backing file's path as QEMU's bdrv_get_full_backing_filename gives it without opening it:
 * relative to the image's directory, unless it names its own place (a URI or a json: spec).
 */
function unopenedBackingPath(info: ImageInfo): ImageInfo {
  const backing = info['backing-filename'];
  if (backing === undefined || info['full-backing-filename'] !== undefined || backing.startsWith('json:')) return info;
  return { ...info, 'full-backing-filename': registry.protocolFor(backing) ? backing : combinePath(info.filename, backing) };
}

export async function info(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, [...IMAGE_OPTIONS, { long: 'output', value: true }, { long: 'backing-chain' }, { long: 'probe' },
    { short: 'h', long: 'help' }], 'vdisk info');
  if (p.options.has('help')) return print(io, HELP), 0;
  const output = outputFormat(p);
  const image = onePositional(p, 'image');
  const probe = hasFlag(p, 'probe');
  if (probe && hasFlag(p, 'backing-chain')) throw new UsageError('--probe and --backing-chain are mutually exclusive');
  await using node = await (probe ? openWithoutBacking(p, image) : openImage(p, image, { readOnly: true }));
  // Sizes come from a stat of the image file, which hangs on dead storage as an open does.
  const deadline = storageTimeouts(p).open;
  const collect = (n: BlockNode): Promise<ImageInfo> => withDeadline(deadline, collectInfo(n),
    () => new BlockError('ETIMEDOUT', `Could not read '${n.filename}': no answer within ${deadline} s (ETIMEDOUT)`, { op: 'stat', path: n.filename }));
  if (!p.options.has('backing-chain')) {
    const collected = await collect(node);
    const facts = probe ? unopenedBackingPath(collected) : collected;
    print(io, output === 'json' ? qemuJson(facts) : humanInfo(facts, node.snapshotTable()));
    return 0;
  }
  // The image and each backing image below it: a JSON array, or human blocks separated by a blank line.
  const chain: BlockNode[] = [];
  for (let n: BlockNode | undefined = node; n; n = n.backing) chain.push(n);
  const facts = await Promise.all(chain.map(collect));
  print(io, output === 'json' ? qemuJson(facts) : chain.map((n, i) => humanInfo(facts[i]!, n.snapshotTable())).join('\n\n'));
  return 0;
}
