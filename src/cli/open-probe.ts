import type { BlockNode } from '../core/block-node.js';
import { parseFilename, PROBE_BYTES, registry, type NodeSpec, type OpenOptions } from '../registry/index.js';
import { hasFlag, lastValue, type Parsed } from './args.js';
import { UsageError } from './errors.js';
import { cacheMode, openStorage, parseImageOpts, storageTimeouts, type StorageTimeouts } from './open-image.js';

/*
 * Opening an image without its backing chain (QEMU's BDRV_O_NO_BACKING), as qemu-img info opens
 * images (`vdisk info --probe`: its format header and what the format needs to make sense of
 * it) and as rebase -u does: the backing file may sit on storage that is gone.
 */

/** Opens IMAGE (read-only unless `extra` says otherwise) as the parsed options say, with `backing: null` where the format has a backing file. */
export async function openWithoutBacking(p: Parsed, image: string, extra: OpenOptions = {}): Promise<BlockNode> {
  const timeouts = storageTimeouts(p);
  const options: OpenOptions = { readOnly: true, cache: cacheMode(lastValue(p, 'cache')), locking: hasFlag(p, 'force-share') ? 'off' : undefined, ...extra };
  const format = lastValue(p, 'format');
  let spec: NodeSpec;
  if (hasFlag(p, 'image-opts')) {
    if (format) throw new UsageError('--image-opts and --format are mutually exclusive');
    spec = parseImageOpts(image);
  } else {
    const parsed = parseFilename(image);
    if (typeof parsed !== 'string') spec = parsed;
    else {
      const driver = registry.get(format ?? await probeFormat(parsed, options, timeouts));
      // A protocol named as the format is the image itself: there is no header to read.
      if (driver.kind === 'protocol') spec = { driver: driver.name, filename: parsed };
      // Raw that was probed keeps the registry's guard against a header hiding in sector 0.
      else spec = { driver: driver.name, file: parsed, ...(format === undefined && driver.name === 'raw' ? { probed: true } : {}) };
    }
  }
  if (registry.get(spec.driver).options.includes('backing') && spec.backing === undefined) spec = { ...spec, backing: null };
  return openStorage(spec, options, timeouts, image);
}

/** The format IMAGE's first bytes show (what the registry probes when it opens a filename). */
async function probeFormat(filename: string, options: OpenOptions, timeouts: StorageTimeouts): Promise<string> {
  await using file = await openStorage(filename, { ...options, readOnly: true, format: registry.protocolFor(filename) ?? 'file' }, timeouts);
  const head = new Uint8Array(Math.min(PROBE_BYTES, file.size));
  await file.read(0, head);
  return registry.probe(head, filename);
}
