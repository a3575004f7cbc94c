import { BlockError } from '../core/errors.js';
import type { DriverDef } from './driver.js';

/** What the registry must know of a driver before loading it: how filenames and specs name it. */
export interface LazyDriverInfo {
  name: string;
  aliases?: readonly string[];
  kind: 'protocol' | 'filter';
  protocols?: readonly string[];
  /** The filter is also inserted over open nodes (DriverDef.insert). */
  inserts?: boolean;
}

/**
 * A driver registered by name whose modules load when it is first opened: every command
 * registers every driver, and most never use the filters or the memory and null protocols
 * (each module loaded is start-up time; vdisk convert loaded ~100). Formats are never lazy:
 * probing needs their code.
 */
export function lazyDriver(info: LazyDriverInfo, load: () => Promise<DriverDef>): DriverDef {
  let loaded: Promise<DriverDef> | undefined;
  const real = () => (loaded ??= load());
  const def: DriverDef = {
    ...info,
    // The loaded driver's options are the ones checked (Registry.openSpec loads it first).
    options: [],
    load: real,
    open: async (spec, ctx) => (await real()).open(spec, ctx),
  };
  if (!info.inserts) return def;
  return {
    ...def,
    async insert(child, spec) {
      const d = await real();
      if (!d.insert) throw new BlockError('ENOTSUP', `Driver '${info.name}' cannot be inserted over a node`, { op: 'open' });
      return d.insert(child, spec);
    },
  };
}
