import type { BlockNode } from '../core/block-node.js';
import { Qcow2Node } from '../drivers/format/qcow2/qcow2-node.js';
import { findSnapshot } from '../drivers/format/qcow2/snapshots.js';
import type { CreateOption, MeasureInfo, NodeSpec } from '../registry/driver.js';
import { parseFilename, registry } from '../registry/index.js';
import { hasFlag, lastValue, parseArgs, type Parsed } from './args.js';
import { print, type CliIo } from './context.js';
import { UsageError } from './errors.js';
import { checkOptionList, parseQemuOpts } from './qemu-opts.js';
import { openImage, openStorage, outputFormat, parseImageOpts, storageTimeouts, TIMEOUT_HELP, TIMEOUT_OPTION } from './open-image.js';
import { qemuStrtosz } from './sizes.js';

const HELP = `usage: vdisk measure [--output=human|json] [-O OUTPUT_FMT] [-o OPTIONS]
                     (--size SIZE | [--image-opts] [-f FMT] [-l SNAPSHOT] [-U] [--timeout SECONDS] FILENAME)
Prints the size a new image of OUTPUT_FMT (default raw) would need, as qemu-img measure does:
for a virtual size, or to hold the data of FILENAME (its backing chain included). "required
size" is what the new image takes, "fully allocated size" what it takes with every cluster
allocated; "bitmaps size" is the room the persistent bitmaps of a qcow2 FILENAME would need.
-o takes the create options of OUTPUT_FMT; for qcow2 cluster_size, compat, refcount_bits,
extended_l2, preallocation and backing_file change the answer.
-l SNAPSHOT (or snapshot.id=ID,snapshot.name=NAME) measures an internal snapshot of FILENAME.
${TIMEOUT_HELP}`;

const INT64_MAX = (1n << 63n) - 1n;

/**
 * What qemu-img appends to every format's create options (bdrv_file.create_opts), a format's own
 * first: measure accepts them all, then the format looks only at those that change a size.
 */
const FILE_CREATE_OPTIONS: readonly CreateOption[] = [
  { name: 'size', type: 'size' },
  { name: 'preallocation', type: 'string' },
  { name: 'nocow', type: 'bool' },
  { name: 'extent_size_hint', type: 'size' },
];

/** cvtnum("image size"): qemu_strtosz between 0 and INT64_MAX, with qemu-img's words. */
function imageSize(text: string): bigint {
  const r = qemuStrtosz(text);
  if (!r.ok && r.error === 'EINVAL') {
    throw new UsageError('Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
  }
  if (!r.ok || r.value > INT64_MAX) throw new UsageError(`Invalid image size specified. Must be between 0 and ${INT64_MAX}.`);
  return r.value;
}

/** `-l`: a snapshot id or name, or QEMU's `snapshot.id=…,snapshot.name=…` form. */
type SnapshotRef = { idOrName: string } | { id?: string; name?: string };

function snapshotRef(text: string): SnapshotRef {
  if (!text.startsWith('snapshot.')) return { idOrName: text };
  const ref: { id?: string; name?: string } = {};
  for (const part of text.split(',')) {
    const eq = part.indexOf('=');
    const key = eq === -1 ? part : part.slice(0, eq);
    const value = eq === -1 ? 'on' : part.slice(eq + 1);
    if (key === 'snapshot.id') ref.id = value;
    else if (key === 'snapshot.name') ref.name = value;
    else throw new UsageError(`Invalid parameter '${key}'`);
  }
  return ref;
}

/**
 * Opens the image at the snapshot `ref` names, read-only, as qemu-img's -l loads it for the
 * measure (bdrv_snapshot_load_tmp): only qcow2 has internal snapshots.
 */
async function openSnapshot(p: Parsed, image: string, node: BlockNode, ref: SnapshotRef): Promise<BlockNode> {
  const fail = (why: string) => new UsageError(`Failed to load snapshot: ${why}`);
  if (!(node instanceof Qcow2Node)) {
    throw fail(`Block format '${node.driver}' used by device '' does not support temporarily loading internal snapshots`);
  }
  const snapshots = [...node.snapshots];
  const found = 'idOrName' in ref ? findSnapshot(snapshots, ref.idOrName)
    : ref.id === undefined && ref.name === undefined ? undefined
      : snapshots.find((s) => (ref.id === undefined || s.id === ref.id) && (ref.name === undefined || s.name === ref.name));
  if (!found) throw fail("Can't find snapshot");
  const base = hasFlag(p, 'image-opts') ? parseImageOpts(image) : parseFilename(image);
  // The image opens again with the driver that opened it, given the snapshot's id (ids are looked up first).
  const spec: NodeSpec = typeof base !== 'string' && base.driver === node.driver
    ? { ...base, snapshot: found.id }
    : { driver: node.driver, file: base, snapshot: found.id };
  return openStorage(spec, { readOnly: true, locking: hasFlag(p, 'force-share') ? 'off' : undefined }, storageTimeouts(p), image);
}

/** The input image, at the snapshot -l names if any, and the length QEMU would measure it over. */
async function openInput(p: Parsed, filename: string, snapshot: SnapshotRef | undefined): Promise<{ node: BlockNode; length?: number }> {
  const node = await openImage(p, filename, { readOnly: true });
  if (!snapshot) return { node };
  try {
    // QEMU loads the snapshot's tables into the open image, which keeps its length.
    return { node: await openSnapshot(p, filename, node, snapshot), length: node.size };
  } finally {
    await node.close();
  }
}

function render(info: MeasureInfo, output: 'human' | 'json'): string {
  if (output === 'human') {
    const lines = [`required size: ${info.required}`, `fully allocated size: ${info.fullyAllocated}`];
    if (info.bitmaps !== undefined) lines.push(`bitmaps size: ${info.bitmaps}`);
    return lines.join('\n');
  }
  // qemu's pretty printer walks its dictionary in hash order: bitmaps, required, fully-allocated;
  // the fields are QAPI 'int', so 2^63 (raw, --size 2^63 - 1 rounded up) shows as int64 wraps it.
  const int = (v: bigint) => BigInt.asIntN(64, v);
  const fields = [
    ...(info.bitmaps !== undefined ? [`"bitmaps": ${int(info.bitmaps)}`] : []),
    `"required": ${int(info.required)}`,
    `"fully-allocated": ${int(info.fullyAllocated)}`,
  ];
  return `{\n${fields.map((f) => `    ${f}`).join(',\n')}\n}`;
}

export async function measure(argv: string[], io: CliIo): Promise<number> {
  const p = parseArgs(argv, [
    { short: 'f', long: 'format', value: true }, { short: 'O', value: true }, { short: 'o', value: true, multiple: true },
    { short: 'l', value: true }, { short: 'U', long: 'force-share' }, { long: 'image-opts' }, { long: 'object', value: true, multiple: true },
    { long: 'output', value: true }, { long: 'size', value: true }, { short: 'h', long: 'help' }, TIMEOUT_OPTION,
  ], 'vdisk measure');
  if (hasFlag(p, 'help')) return print(io, HELP), 0;
  const output = outputFormat(p);
  const sizeText = lastValue(p, 'size');
  const size = sizeText === undefined ? undefined : imageSize(sizeText);
  const optionLists = p.options.get('o') ?? [];
  for (const list of optionLists) checkOptionList(list);
  const snapshotText = lastValue(p, 'l');
  const snapshot = snapshotText === undefined ? undefined : snapshotRef(snapshotText);
  if (p.options.has('object')) throw new UsageError('--object is not supported: vdisk has no secrets or other objects to define');

  if (p.positionals.length > 1) throw new UsageError('At most one filename argument is allowed.');
  const filename = p.positionals[0];
  if (filename === undefined && (hasFlag(p, 'image-opts') || hasFlag(p, 'format') || snapshot)) {
    throw new UsageError('--image-opts, -f, and -l require a filename argument.');
  }
  if (filename !== undefined && size !== undefined) throw new UsageError('--size N cannot be used together with a filename.');
  if (filename === undefined && size === undefined) throw new UsageError('Either --size N or one filename must be specified.');

  const opened = filename === undefined ? undefined : await openInput(p, filename, snapshot);
  const input = opened?.node;
  try {
    const format = lastValue(p, 'O') ?? 'raw';
    const driver = registry.has(format) ? registry.get(format) : undefined;
    if (!driver) throw new UsageError(`Unknown file format '${format}'`);
    if (!driver.measure) throw new UsageError(`Block driver '${format}' does not support size measurement`);
    const options = parseQemuOpts(optionLists.join(','), [...(driver.createOptions ?? []), ...FILE_CREATE_OPTIONS]);
    if (size !== undefined) options.set('size', size);
    print(io, render(await driver.measure({ options, input, inputLength: opened?.length }), output));
    return 0;
  } finally {
    await input?.close();
  }
}
