import type { BlockNode } from '../core/block-node.js';
import { copyOnReadDriver } from '../drivers/filter/copy-on-read/index.js';
import { preallocateDriver } from '../drivers/filter/preallocate/index.js';
import { rawDriver } from '../drivers/format/raw/index.js';
import { qcow2Driver } from '../drivers/format/qcow2/index.js';
import { fileDriver } from '../drivers/protocol/file/index.js';
import { memoryDriver } from '../drivers/protocol/memory/index.js';
import { nbdDriver } from '../drivers/protocol/nbd/index.js';
import { nullDriver } from '../drivers/protocol/null/index.js';
import type { NodeSpec, OpenOptions } from './driver.js';
import { Registry } from './registry.js';
import { knownFormats } from './known-formats.js';

export { Registry, parseFilename, PROBE_BYTES } from './registry.js';
export type { DriverDef, NodeSpec, OpenContext, OpenOptions } from './driver.js';
export type { OpenGate } from './open-gate.js';
export { DEFAULT_MAX_CHAIN_DEPTH } from './open-gate.js';

/** The registry with every built-in driver. */
// Registration replaces by name, so a real driver listed after the known-format stubs wins.
export const registry = new Registry([fileDriver, memoryDriver, nullDriver, nbdDriver, rawDriver, ...knownFormats, qcow2Driver, preallocateDriver, copyOnReadDriver]);

/** Opens an image (filename, `json:{…}` or node spec) with the built-in drivers. */
export function open(spec: string | NodeSpec, options?: OpenOptions): Promise<BlockNode> {
  return registry.open(spec, options);
}
