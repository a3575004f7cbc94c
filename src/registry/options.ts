import { BlockError } from '../core/errors.js';
import { qemuStrtosz } from '../core/sizes.js';
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

/**
 * A size as QEMU's qemu_opt_get_size reads it: bytes, or a string with an optional suffix (k, M,
 * G, T, P, E) and fractions ("1.5M"); vdisk's limit is a safe integer. The message is QEMU's.
 */
export function sizeOption(spec: NodeSpec, key: string): number | undefined {
  const v = spec[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v;
  const r = typeof v === 'string' ? qemuStrtosz(v) : undefined;
  if (!r?.ok || r.value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new BlockError('EINVAL', `Parameter '${key}' expects a non-negative number below 2^64 (optional suffix k, M, G, T, P or E)`, { op: 'open' });
  }
  return Number(r.value);
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
      else if (!isPlainObject(next)) at[part] = {};
      at = at[part] as Record<string, unknown>;
    }
    const last = parts[parts.length - 1]!;
    // Merged with what dotted keys already put there, so the order of the keys does not matter.
    at[last] = merge(at[last], isPlainObject(value) ? unflatten(value) : value);
  }
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function merge(prev: unknown, next: unknown): unknown {
  if (!isPlainObject(prev)) return next;
  // A child named by filename (`file: 'a.img'`) plus dotted options for it (`file.cache`).
  if (typeof next === 'string') return { filename: next, ...prev };
  if (!isPlainObject(next)) return next;
  const out: Record<string, unknown> = { ...prev };
  for (const [k, v] of Object.entries(next)) out[k] = merge(out[k], v);
  return out;
}
