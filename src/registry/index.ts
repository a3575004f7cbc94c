import type { BlockNode } from '../core/block-node.js';
import { rawDriver } from '../drivers/format/raw/index.js';
import { qcow2Driver } from '../drivers/format/qcow2/index.js';
import { fileDriver } from '../drivers/protocol/file/index.js';
import { nbdDriver } from '../drivers/protocol/nbd/index.js';
import type { NodeSpec, OpenOptions } from './driver.js';
import { Registry } from './registry.js';
import { knownFormats } from './known-formats.js';
import { lazyDriver } from './lazy-driver.js';

export { Registry, parseFilename, PROBE_BYTES } from './registry.js';
export type { DriverDef, NodeSpec, OpenContext, OpenOptions } from './driver.js';
export type { OpenGate } from './open-gate.js';
export { DEFAULT_MAX_CHAIN_DEPTH } from './open-gate.js';

/** Drivers few commands use: their modules load when first opened. */
const memoryDriver = lazyDriver({ name: 'memory', kind: 'protocol' }, async () => (await import('../drivers/protocol/memory/index.js')).memoryDriver);
const nullDriver = lazyDriver({ name: 'null', aliases: ['null-co'], kind: 'protocol' }, async () => (await import('../drivers/protocol/null/index.js')).nullDriver);
const curlDrivers = (['http', 'https'] as const).map((s) => lazyDriver({ name: s, kind: 'protocol', protocols: [s] }, async () => (await import('../drivers/protocol/http/index.js'))[`${s}Driver`]));
const preallocateDriver = lazyDriver({ name: 'preallocate', kind: 'filter' }, async () => (await import('../drivers/filter/preallocate/index.js')).preallocateDriver);
const copyOnReadDriver = lazyDriver({ name: 'copy-on-read', kind: 'filter', inserts: true },
  async () => (await import('../drivers/filter/copy-on-read/index.js')).copyOnReadDriver);

/** The registry with every built-in driver. */
// Registration replaces by name, so a real driver listed after the known-format stubs wins.
export const registry = new Registry([fileDriver, memoryDriver, nullDriver, nbdDriver, ...curlDrivers, rawDriver, ...knownFormats, qcow2Driver, preallocateDriver, copyOnReadDriver]);

/** Opens an image (filename, `json:{…}` or node spec) with the built-in drivers. */
export function open(spec: string | NodeSpec, options?: OpenOptions): Promise<BlockNode> {
  return registry.open(spec, options);
}
