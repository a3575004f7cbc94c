import path from 'node:path';
import type { BlockNode } from '../core/block-node.js';
import { NbdExport, type DiscardMode } from '../nbd/server/export.js';
import { open, type OpenOptions } from '../registry/index.js';
import { hasFlag, lastValue, type Parsed } from './args.js';
import { parseCreateOptions } from './create.js';
import { UsageError } from './errors.js';
import { parseImageOpts } from './open-image.js';

/** One export to open: an image and how it is offered. */
export interface ExportSpec {
  name: string;
  image: string;
  format?: string;
  description: string;
  readOnly: boolean;
  /** IMAGE is `key=value,…` image options (qemu-nbd --image-opts). */
  imageOpts: boolean;
}

const EXPORT_KEYS = ['name', 'file', 'format', 'description', 'read-only'];

/**
 * The exports a command line asks for. One IMAGE is exported under -x (default ''), as qemu-nbd
 * does; several IMAGEs are exported under their file names; `--export name=N,file=F[,format=…]
 * [,description=…][,read-only=on]` names each export explicitly.
 */
export function exportSpecs(p: Parsed): ExportSpec[] {
  const format = lastValue(p, 'format');
  const readOnly = hasFlag(p, 'read-only');
  const imageOpts = hasFlag(p, 'image-opts');
  const exportName = lastValue(p, 'export-name');
  const description = lastValue(p, 'description') ?? '';
  const images = p.positionals;
  if (images.length > 1 && exportName !== undefined) throw new UsageError('-x names one export; with several images each is named after its file');
  const specs: ExportSpec[] = images.map((image) => ({
    name: images.length === 1 ? exportName ?? '' : path.basename(image),
    image, format, description, readOnly, imageOpts,
  }));
  for (const text of p.options.get('export') ?? []) {
    const o = parseCreateOptions([text]);
    const unknown = Object.keys(o).find((k) => !EXPORT_KEYS.includes(k));
    if (unknown) throw new UsageError(`--export: unknown key '${unknown}' (expected ${EXPORT_KEYS.join(', ')})`);
    if (o.name === undefined || !o.file) throw new UsageError('--export needs name=NAME,file=IMAGE');
    if (o['read-only'] !== undefined && !['on', 'off'].includes(o['read-only'])) throw new UsageError(`--export: read-only must be on or off`);
    specs.push({
      name: o.name, image: o.file, format: o.format ?? format, description: o.description ?? '',
      readOnly: readOnly || o['read-only'] === 'on', imageOpts: false,
    });
  }
  if (specs.length === 0) throw new UsageError('Expecting an image file name (or --export)');
  const seen = new Set<string>();
  for (const s of specs) {
    if (seen.has(s.name)) throw new UsageError(`Two exports are named '${s.name}'; name them with --export`);
    seen.add(s.name);
  }
  return specs;
}

export interface ExportSettings {
  open: OpenOptions;
  discard: DiscardMode;
  allocationDepth: boolean;
}

/** Opens every export's image; if one fails, those already open are closed again. */
export async function openExports(specs: readonly ExportSpec[], settings: ExportSettings): Promise<NbdExport[]> {
  const opened: BlockNode[] = [];
  try {
    const exports: NbdExport[] = [];
    for (const s of specs) {
      const options: OpenOptions = { ...settings.open, format: s.format, readOnly: s.readOnly };
      if (s.imageOpts && s.format) throw new UsageError('--image-opts and --format are mutually exclusive');
      const node = await open(s.imageOpts ? parseImageOpts(s.image) : s.image, options);
      opened.push(node);
      exports.push(new NbdExport(node, {
        name: s.name, description: s.description, readOnly: s.readOnly,
        discard: settings.discard, allocationDepth: settings.allocationDepth,
      }));
    }
    return exports;
  } catch (err) {
    await Promise.allSettled(opened.map((n) => n.close()));
    throw err;
  }
}
