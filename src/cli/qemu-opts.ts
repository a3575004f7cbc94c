import { qemuStrtosz } from '../core/sizes.js';
import type { CreateOption, CreateOptionValue } from '../registry/driver.js';
import { UsageError } from './errors.js';

/*
 * `-o` lists as qemu-img reads them: QEMU's option parser (util/qemu-option.c opts_do_parse)
 * against a list of known options, every value checked against its type as it is read, the
 * first bad one reported. measure and amend must accept exactly what qemu-img accepts
 * (`lazy_refcounts` alone is on, `nolazy_refcounts` off, `,,` a comma, `id=` ignored), so
 * scripts written for it keep working.
 */

const U64_MAX = (1n << 64n) - 1n;

/** is_valid_option_list(): not empty, no leading comma, no unpaired comma at the end. */
export function checkOptionList(text: string): void {
  const trailing = text.length - text.replace(/,+$/, '').length;
  if (text === '' || text.startsWith(',') || trailing % 2 === 1) throw new UsageError(`Invalid option list: ${text}`);
}

/** get_opt_value(): up to the next lone comma; a doubled comma stands for one. */
function optValue(s: string, at: number): [value: string, end: number] {
  let value = '';
  for (;;) {
    const comma = s.indexOf(',', at);
    if (comma === -1) return [value + s.slice(at), s.length];
    value += s.slice(at, comma);
    if (s[comma + 1] !== ',') return [value, comma];
    value += ',';
    at = comma + 2;
  }
}

/** qemu_strtou64 with base 0: decimal, 0x hex or 0 octal, leading blanks and a sign (a minus wraps around). */
function parseNumber(name: string, text: string): bigint {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  if (!m) throw new UsageError(`Parameter '${name}' expects a number`);
  const digits = m[2]!;
  const value = /^0[0-7]+$/.test(digits) ? BigInt('0o' + digits.slice(1)) : BigInt(digits);
  if (value > U64_MAX) throw new UsageError(`Value '${text}' is too large for parameter '${name}'`);
  return m[1] === '-' ? BigInt.asUintN(64, -value) : value;
}

function parseValue(desc: CreateOption, text: string): CreateOptionValue {
  switch (desc.type) {
    case 'string':
      return text;
    case 'bool':
      // qapi_bool_parse()
      if (['on', 'yes', 'true', 'y'].includes(text)) return true;
      if (['off', 'no', 'false', 'n'].includes(text)) return false;
      throw new UsageError(`Parameter '${desc.name}' expects 'on' or 'off'`);
    case 'number':
      return parseNumber(desc.name, text);
    case 'size': {
      const r = qemuStrtosz(text);
      if (r.ok) return r.value;
      if (r.error === 'ERANGE') throw new UsageError(`Value '${text}' is out of range for parameter '${desc.name}'`);
      throw new UsageError(`Parameter '${desc.name}' expects a non-negative number below 2^64 (optional suffix k, M, G, T, P or E)`);
    }
  }
}

/**
 * Parses `a=1,b=2,flag,noflag` against `options` (the first of a name wins); the last of a
 * repeated key wins, as qemu_opt_get finds it. A key without a value is a flag set to on (`no`
 * prefix: off). `unknown` words the error for a name that is not in the list.
 */
export function parseQemuOpts(
  text: string,
  options: readonly CreateOption[],
  unknown: (name: string) => string = (name) => `Invalid parameter '${name}'`,
): Map<string, CreateOptionValue> {
  const descs = new Map<string, CreateOption>();
  for (const d of options) if (!descs.has(d.name)) descs.set(d.name, d);
  const out = new Map<string, CreateOptionValue>();
  for (let at = 0; at < text.length;) {
    let name: string;
    let value: string;
    const stop = text.slice(at).search(/[=,]/);
    const len = stop === -1 ? text.length - at : stop;
    name = text.slice(at, at + len);
    if (text[at + len] === '=') {
      [value, at] = optValue(text, at + len + 1);
    } else {
      at += len;
      [name, value] = name.startsWith('no') ? [name.slice(2), 'off'] : [name, 'on'];
    }
    if (text[at] === ',') at++;
    // QEMU's parser takes "id" for itself and drops it.
    if (name === 'id') continue;
    const desc = descs.get(name);
    if (!desc) throw new UsageError(unknown(name));
    out.delete(name);
    out.set(name, parseValue(desc, value));
  }
  return out;
}
