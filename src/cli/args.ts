import { UsageError } from './errors.js';

export interface OptionSpec {
  /** Short letter, e.g. 'f'. */
  short?: string;
  /** Long name, e.g. 'output'. */
  long?: string;
  /** Takes a value (`-f raw`, `--output=json`, `--output json`). */
  value?: boolean;
  /** May be given several times; the values accumulate. */
  multiple?: boolean;
}

export interface Parsed {
  /** By option key (the long name if any, else the short letter): all values given; flags get ''. */
  options: Map<string, string[]>;
  positionals: string[];
}

/**
 * getopt_long as qemu-img and qemu-io use it (GNU permutation: options may follow operands;
 * `--` ends options; short flags cluster, `-rU`; a value may be attached, `-fraw`).
 */
export function parseArgs(argv: readonly string[], specs: readonly OptionSpec[], command = 'vdisk'): Parsed {
  const options = new Map<string, string[]>();
  const positionals: string[] = [];
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short!, s]));
  const byLong = new Map(specs.filter((s) => s.long).map((s) => [s.long!, s]));
  const add = (spec: OptionSpec, value: string) => {
    const key = spec.long ?? spec.short!;
    const list = options.get(key) ?? [];
    // As with qemu-img, a repeated single-valued option is not an error: the last one wins.
    if (!spec.multiple) list.length = 0;
    list.push(value);
    options.set(key, list);
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = arg.slice(2, eq === -1 ? undefined : eq);
      const spec = byLong.get(name);
      if (!spec) throw new UsageError(`${command}: unrecognized option '--${name}'`);
      if (spec.value) {
        let value: string | undefined = eq === -1 ? argv[++i] : arg.slice(eq + 1);
        if (value === undefined) throw new UsageError(`${command}: option '--${name}' requires an argument`);
        add(spec, value);
      } else {
        if (eq !== -1) throw new UsageError(`${command}: option '--${name}' doesn't allow an argument`);
        add(spec, '');
      }
      continue;
    }
    if (arg.startsWith('-') && arg.length > 1) {
      for (let j = 1; j < arg.length; j++) {
        const letter = arg[j]!;
        const spec = byShort.get(letter);
        if (!spec) throw new UsageError(`${command}: invalid option -- '${letter}'`);
        if (spec.value) {
          const value = j + 1 < arg.length ? arg.slice(j + 1) : argv[++i];
          if (value === undefined) throw new UsageError(`${command}: option requires an argument -- '${letter}'`);
          add(spec, value);
          break;
        }
        add(spec, '');
      }
      continue;
    }
    positionals.push(arg);
  }
  return { options, positionals };
}

export function lastValue(p: Parsed, key: string): string | undefined {
  const v = p.options.get(key);
  return v?.[v.length - 1];
}

export function hasFlag(p: Parsed, key: string): boolean {
  return p.options.has(key);
}
