import path from 'node:path';
import type { BlockNode } from '../core/block-node.js';
import { BlockError } from '../core/errors.js';
import type { DetectZeroes, DiscardMode } from '../core/types.js';
import type { DriverDef, NodeSpec, OpenContext, OpenOptions } from './driver.js';
import { checkGate, DEFAULT_MAX_CHAIN_DEPTH } from './open-gate.js';
import { boolOption, enumOption, stringOption, unflatten } from './options.js';

/** How much of an image's start the probes see (QEMU reads the same 2 KiB). */
export const PROBE_BYTES = 2048;

const COMMON_OPTIONS = ['driver', 'node-name', 'read-only', 'detect-zeroes', 'discard', 'copy-on-read'];

/** bdrv_parse_discard_flags(): QEMU's names for the two discard modes. */
const DISCARD_MODES: Record<string, DiscardMode> = { ignore: 'ignore', off: 'ignore', unmap: 'unmap', on: 'unmap' };

/** QEMU's check (bdrv_parse_detect_zeroes): punching holes for zeros needs discards to be allowed. */
function checkDetectZeroes(detect: DetectZeroes | undefined, discard: DiscardMode): void {
  if (detect === 'unmap' && discard !== 'unmap') {
    throw new BlockError('EINVAL', 'setting detect-zeroes to unmap is not allowed without setting discard operation to unmap', { op: 'open' });
  }
}

/**
 * Drivers by name, probing, and `open()`: the only place that turns names and specs into nodes.
 * Format drivers never import it; they get an OpenContext for their children.
 */
export class Registry {
  private readonly drivers = new Map<string, DriverDef>();

  constructor(drivers: readonly DriverDef[] = []) {
    for (const d of drivers) this.register(d);
  }

  register(driver: DriverDef): void {
    for (const name of [driver.name, ...(driver.aliases ?? [])]) this.drivers.set(name, driver);
  }

  get(name: string): DriverDef {
    const d = this.drivers.get(name);
    if (!d) throw new BlockError('EINVAL', `Unknown driver '${name}'`, { op: 'open' });
    return d;
  }

  has(name: string): boolean {
    return this.drivers.has(name);
  }

  /** The registered drivers, each once. */
  list(kind?: DriverDef['kind']): DriverDef[] {
    return [...new Set(this.drivers.values())].filter((d) => !kind || d.kind === kind);
  }

  /** The protocol driver whose URI scheme starts `filename` (`nbd://…`), if any claims it. */
  protocolFor(filename: string): string | undefined {
    const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(filename)?.[1]?.toLowerCase();
    if (!scheme) return undefined;
    return this.list('protocol').find((d) => d.protocols?.includes(scheme))?.name;
  }

  /** The protocol node spec for a plain filename: a claimed URI, or a local file. */
  private protocolSpec(filename: string): NodeSpec {
    return { driver: this.protocolFor(filename) ?? 'file', filename };
  }

  /** The best-scoring format for these first bytes; raw is the last resort. */
  probe(head: Uint8Array, filename = ''): string {
    let best: DriverDef | undefined;
    let bestScore = 0;
    for (const d of this.list('format')) {
      const score = d.probe?.(head, filename) ?? 0;
      // Ties go against raw: it must stay the last resort whatever the registration order.
      if (score > bestScore || (score > 0 && score === bestScore && best?.name === 'raw')) [best, bestScore] = [d, score];
    }
    if (!best) throw new BlockError('E_WRONG_FORMAT', `Could not determine the format of '${filename}'`, { op: 'open', path: filename });
    return best.name;
  }

  /**
   * Opens an image from a filename (`json:{…}` accepted, as QEMU does) or a node spec. A filename
   * with no format is probed; options apply to the whole graph.
   */
  async open(spec: string | NodeSpec, options: OpenOptions = {}): Promise<BlockNode> {
    checkDetectZeroes(options.detectZeroes, options.discard ?? 'unmap');
    let node = await this.openAt(spec, options, 0, options.format);
    if (options.copyOnRead) node = await this.insertCopyOnRead(node);
    if (options.detectZeroes) node.detectZeroes = options.detectZeroes;
    if (options.discard) node.discardMode = options.discard;
    return node;
  }

  /** QEMU's copy-on-read=on: the copy-on-read filter above the node; refused for read-only nodes, as QEMU does. */
  private async insertCopyOnRead(node: BlockNode): Promise<BlockNode> {
    const insert = this.drivers.get('copy-on-read')?.insert;
    if (!insert || node.readOnly) {
      await node.close();
      throw new BlockError(insert ? 'EROFS' : 'ENOTSUP', insert ? "Can't use copy-on-read on read-only device" : 'No copy-on-read filter is registered',
        { op: 'open', path: node.filename });
    }
    return insert(node, { driver: 'copy-on-read' });
  }

  private async openAt(spec: string | NodeSpec, options: OpenOptions, depth: number, format: string | undefined): Promise<BlockNode> {
    if (typeof spec === 'string') {
      const parsed = parseFilename(spec);
      if (typeof parsed !== 'string') return this.openSpec(parsed, options, depth);
      // `-f file` names the protocol itself: the image is the file's bytes, no format above.
      if (format && this.get(format).kind === 'protocol') return this.openSpec({ driver: format, filename: parsed }, options, depth);
      if (format) return this.openSpec({ driver: format, file: this.protocolSpec(parsed) }, options, depth);
      return this.openProbed(parsed, options, depth);
    }
    if (format && this.get(spec.driver).kind === 'protocol') {
      return this.openSpec({ driver: format, file: spec }, options, depth);
    }
    return this.openSpec(spec, options, depth);
  }

  private async openProbed(filename: string, options: OpenOptions, depth: number): Promise<BlockNode> {
    const file = await this.openSpec(this.protocolSpec(filename), options, depth);
    let format: string;
    try {
      const head = new Uint8Array(Math.min(PROBE_BYTES, file.size));
      await file.read(0, head);
      format = this.probe(head, filename);
    } catch (err) {
      await file.close();
      throw err;
    }
    await file.close();
    // Reopened rather than reused so the format driver owns a child opened its own way.
    return this.openSpec({ driver: format, file: this.protocolSpec(filename), ...(format === 'raw' ? { probed: true } : {}) }, options, depth);
  }

  private async openSpec(input: NodeSpec, options: OpenOptions, depth: number): Promise<BlockNode> {
    const spec = unflatten(input) as NodeSpec;
    if (typeof spec.driver !== 'string') {
      throw new BlockError('EINVAL', "A node spec needs a 'driver' string", { op: 'open' });
    }
    const named = this.get(spec.driver);
    const driver = named.load ? await named.load() : named;
    const allowed = new Set([...COMMON_OPTIONS, ...driver.options]);
    for (const key of Object.keys(spec)) {
      if (!allowed.has(key)) {
        throw new BlockError('EINVAL', `Block driver '${spec.driver}' does not support the option '${key}'`, { op: 'open' });
      }
    }
    // Read-only on a node holds for everything below it, as in QEMU.
    const readOnly = boolOption(spec, 'read-only');
    // Checked before the driver opens anything, so a bad value cannot leak an open node.
    const dz = enumOption(spec, 'detect-zeroes', ['off', 'on', 'unmap'] as const);
    const discard = discardOption(spec);
    checkDetectZeroes(dz, discard ?? options.discard ?? 'unmap');
    const cor = boolOption(spec, 'copy-on-read') ?? false;
    const ctx = this.context(readOnly ? { ...options, readOnly } : options, depth);
    let node = await driver.open(spec, ctx);
    if (cor) node = await this.insertCopyOnRead(node);
    if (dz) node.detectZeroes = dz;
    if (discard) node.discardMode = discard;
    return node;
  }

  private context(options: OpenOptions, depth: number): OpenContext {
    return {
      options,
      depth,
      openChild: (child, _role) => {
        const spec = typeof child === 'string' ? parseFilename(child) : child;
        if (typeof spec === 'string') return this.openSpec(this.protocolSpec(spec), options, depth);
        // QEMU lets `file.filename=x` stand for a file child without naming its driver.
        return this.openSpec(spec.driver === undefined ? { ...spec, driver: 'file' } : spec, options, depth);
      },
      openReference: async (name, ref) => {
        const limit = options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
        if (depth + 1 > limit) {
          throw new BlockError('E_CORRUPT', `Backing chain is deeper than ${limit} images (a loop?) at '${ref.relativeTo}'`, { op: 'open', path: name });
        }
        if (name.startsWith('json:')) {
          if (options.gate && options.gate.mode !== 'permissive') {
            throw new BlockError('EPERM', `'${ref.relativeTo}' refers to a json: spec, which the open gate does not allow`, { op: 'open' });
          }
          return this.openAt(name, { ...options, readOnly: ref.readOnly ?? options.readOnly }, depth + 1, ref.format);
        }
        // A URI (nbd://…) names its own place; only paths are relative to the naming image.
        const uri = this.protocolFor(name) !== undefined;
        const target = uri ? name : combinePath(ref.relativeTo, name);
        await checkGate(options.gate ?? { mode: 'permissive' }, target, ref.relativeTo, uri);
        return this.openAt(target, { ...options, readOnly: ref.readOnly ?? options.readOnly, detectZeroes: undefined }, depth + 1, ref.format);
      },
      probeFormat: (head) => this.probe(head),
    };
  }
}

function discardOption(spec: NodeSpec): DiscardMode | undefined {
  const text = stringOption(spec, 'discard');
  if (text === undefined) return undefined;
  const mode = DISCARD_MODES[text];
  if (!mode) throw new BlockError('EINVAL', `Invalid discard option: ${text}`, { op: 'open' });
  return mode;
}

/** `json:{…}` becomes a spec; anything else is a plain filename. */
export function parseFilename(name: string): NodeSpec | string {
  if (!name.startsWith('json:')) return name;
  let value: unknown;
  try {
    value = JSON.parse(name.slice(5));
  } catch (err) {
    // V8 quotes the offending text, newlines and all; an error message stays on one line.
    const why = (err as Error).message.replace(/\s+/g, ' ');
    throw new BlockError('EINVAL', `Could not parse the json: filename: ${why}`, { op: 'open' });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new BlockError('EINVAL', 'A json: filename must hold a JSON object', { op: 'open' });
  }
  const spec = unflatten(value as Record<string, unknown>);
  if (typeof spec.driver !== 'string') throw new BlockError('EINVAL', "A json: filename needs a 'driver' key", { op: 'open' });
  return spec as NodeSpec;
}

/**
 * QEMU's path_combine: a relative name is taken from the naming image's directory, by plain
 * string joining (`dir/../base.img` stays as it is, and is what qemu-img info shows).
 */
export function combinePath(base: string, name: string): string {
  if (path.isAbsolute(name)) return name;
  const slash = base.lastIndexOf('/');
  return slash === -1 ? name : base.slice(0, slash + 1) + name;
}
