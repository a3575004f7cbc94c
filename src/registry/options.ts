import { BlockError } from '../core/errors.js';
import type { NodeSpec } from './driver.js';

/*
 * Readers for node-spec options. Values may arrive typed (JSON) or as strings (dotted keys on a
 * command line), as QEMU's QDict options do.
 */
function bad(spec: NodeSpec, key: string, want: string): BlockError {
  return new BlockError('EINVAL', `${spec.driver}: option '${key}' must be ${want}, not ${JSON.stringify(spec[key])}`, { op: 'open' });
}

export function numberOption(spec: NodeSpec, key: string): number | undefined {
  const v = spec[key];
  if (v === undefined || v === null) return undefined;
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw bad(spec, key, 'a non-negative integer');
  return n;
}

export function stringOption(spec: NodeSpec, key: string): string | undefined {
  const v = spec[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw bad(spec, key, 'a string');
  return v;
}

export function boolOption(spec: NodeSpec, key: string): boolean | undefined {
  const v = spec[key];
  if (v === undefined || v === null) return undefined;
  if (v === true || v === 'on' || v === 'true') return true;
  if (v === false || v === 'off' || v === 'false') return false;
  throw bad(spec, key, 'on or off');
}

export function enumOption<T extends string>(spec: NodeSpec, key: string, values: readonly T[]): T | undefined {
  const v = stringOption(spec, key);
  if (v === undefined) return undefined;
  if (!values.includes(v as T)) throw bad(spec, key, `one of ${values.join(', ')}`);
  return v as T;
}

/** Turns QEMU's flattened keys (`file.filename`) into nested objects. */
export function unflatten(spec: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(spec)) {
    const parts = key.split('.');
    let at = out;
    for (const part of parts.slice(0, -1)) {
      const next = at[part];
      if (typeof next === 'string') at[part] = { filename: next };
      else if (next === undefined || next === null || typeof next !== 'object') at[part] = {};
      at = at[part] as Record<string, unknown>;
    }
    const last = parts[parts.length - 1]!;
    at[last] = value !== null && typeof value === 'object' && !Array.isArray(value) ? unflatten(value as Record<string, unknown>) : value;
  }
  return out;
}
