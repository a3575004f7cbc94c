import type { BlockNode } from '../core/block-node.js';
import { nativeStatus } from '../native/index.js';
import { parseArgs } from './args.js';
import { print, type CliIo } from './context.js';
import { IMAGE_OPTIONS, onePositional, openImage, outputFormat } from './open-image.js';
import { qemuJson, sizeToStr } from './qemu-format.js';

const HELP = `usage: vdisk info [-f FMT] [--output=human|json] [-U] [-t CACHE] [--image-opts] IMAGE
Shows an image's format, sizes and format-specific facts, as qemu-img info does.`;

/** The fields and order of qemu-img info --output=json. */
export interface ImageInfo {
  'virtual-size': number;
  filename: string;
  format: string;
  'actual-size'?: number;
  'dirty-flag': boolean;
  'format-specific'?: { type: string; data: Record<string, unknown> };
}

export async function collectInfo(node: BlockNode): Promise<ImageInfo> {
  const actual = await node.allocatedSize();
  const specific = node.formatSpecific();
  return {
    'virtual-size': node.size,
    filename: node.filename,
    format: node.driver,
    ...(actual !== undefined ? { 'actual-size': actual } : {}),
    'dirty-flag': false,
    ...(specific ? { 'format-specific': { type: node.driver, data: specific } } : {}),
  };
}

/** What is switched off when the native addon did not load; empty when all is well. */
export function featuresOff(): string[] {
  return nativeStatus.loaded ? [] : ['holes (everything reads as data)', 'fast zeroing and hole punching', 'image locking', 'cache=none'];
}

export function humanInfo(info: ImageInfo): string {
  const lines = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${sizeToStr(info['virtual-size'])} (${info['virtual-size']} bytes)`,
    `disk size: ${info['actual-size'] === undefined ? 'unavailable' : sizeToStr(info['actual-size'])}`,
  ];
  const off = featuresOff();
  if (off.length > 0) lines.push(`vdisk native addon not loaded (${nativeStatus.reason ?? 'unknown reason'}); off: ${off.join(', ')}`);
  return lines.join('\n');
}

export async function info(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, [...IMAGE_OPTIONS, { long: 'output', value: true }, { short: 'h', long: 'help' }], 'vdisk info');
  if (p.options.has('help')) return print(io, HELP), 0;
  const output = outputFormat(p);
  const image = onePositional(p, 'image');
  await using node = await openImage(p, image, { readOnly: true });
  const facts = await collectInfo(node);
  print(io, output === 'json' ? qemuJson(facts) : humanInfo(facts));
  return 0;
}
