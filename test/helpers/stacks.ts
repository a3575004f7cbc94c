/**
 * The stacks that the conformance suite and the property tests run against. Each entry builds a
 * fresh BlockNode of a requested size (plus whatever lives around it) and says what the stack can
 * do, so a test asserts exactly what that stack promises.
 */
import { readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { BlockNode } from '../../src/core/block-node.js';
import { FilterNode } from '../../src/core/filter-node.js';
import type { DetectZeroes } from '../../src/core/types.js';
import { createQcow2 } from '../../src/drivers/format/qcow2/create.js';
import { RawNode } from '../../src/drivers/format/raw/index.js';
import { FileNode } from '../../src/drivers/protocol/file/index.js';
import { MemoryNode } from '../../src/drivers/protocol/memory/index.js';
import { NullNode } from '../../src/drivers/protocol/null/index.js';
import { nativeStatus } from '../../src/native/index.js';
import { open, type NodeSpec } from '../../src/registry/index.js';
import { assertBytesEqual, pattern } from './bytes.js';
import { makeTmpDir, type TmpDir } from './tmp.js';

export interface StackOpenOptions {
  readOnly?: boolean;
  detectZeroes?: DetectZeroes;
}

export interface StackFeatures {
  /** Writes are kept. False for null, which drops them: reads always return zeros. */
  persistent: boolean;
  /** The image's bytes live in a host file (hostPath), so holes there can be observed. */
  hostFile: boolean;
  /**
   * Whole host blocks discarded or zeroed with mayUnmap become holes that block status reports
   * as zero (a file image at host offset 0). Host files need the native addon for this.
   */
  punchesHoles: boolean;
  /**
   * Every whole block (of the top node's discard alignment) that a discard covers reads zero.
   * Host files need the native addon for this; without it discard does nothing.
   */
  discardZeroes: boolean;
  /** The top node's requestAlignment, as the stack configures it. */
  alignment: number;
}

export interface StackInstance {
  /** The current top node (replaced by reopen()). */
  readonly node: BlockNode;
  readonly hostPath: string | undefined;
  /** Where the image starts in hostPath. */
  readonly hostOffset: number;
  /** Closes the current node and opens the same image again with these options. */
  reopen(opts?: StackOpenOptions): Promise<BlockNode>;
  /** Checks what lives outside the image (sentinel bytes, host file size); throws if touched. */
  verify(): Promise<void>;
  /** Closes the node, runs verify(), removes temporary files. */
  dispose(): Promise<void>;
}

export interface Stack {
  readonly name: string;
  readonly features: StackFeatures;
  /** Why the stack cannot run in this environment, or undefined when it can. */
  unavailable(): string | undefined;
  create(size: number, opts?: StackOpenOptions): Promise<StackInstance>;
}

/** A filter that changes nothing: it exercises FilterNode's forwarding in every stack test. */
export class PassthroughFilter extends FilterNode {
  readonly driver = 'passthrough';
}

const SENTINEL_SEED = 0x5e47;

/** Builds the StackInstance plumbing around an `openNode` function for one image. */
function instance(args: {
  tmp?: TmpDir;
  hostPath?: string;
  hostOffset?: number;
  /** Expected bytes outside the image in the host file: [offset, bytes][]. */
  sentinels?: [number, Uint8Array][];
  hostSize?: number;
  openNode(opts: StackOpenOptions, previous: BlockNode | undefined): Promise<BlockNode>;
  opts: StackOpenOptions;
}): Promise<StackInstance> {
  let node: BlockNode;
  const verify = async (): Promise<void> => {
    if (!args.hostPath) return;
    if (args.hostSize !== undefined) {
      // The file driver counts whole sectors, as QEMU does: a write to the last, partial
      // sector of a file may extend it to the sector boundary, and no further.
      const st = await stat(args.hostPath);
      const max = args.sentinels?.length ? args.hostSize : Math.ceil(args.hostSize / 512) * 512;
      if (st.size < args.hostSize || st.size > max) throw new Error(`host file size changed: ${st.size}, expected ${args.hostSize}`);
    }
    if (!args.sentinels?.length) return;
    const host = new Uint8Array(await readFile(args.hostPath));
    for (const [off, bytes] of args.sentinels) {
      assertBytesEqual(host.subarray(off, off + bytes.byteLength), bytes, `sentinel bytes at host offset ${off}`, off);
    }
  };
  const inst: StackInstance = {
    get node() {
      return node;
    },
    hostPath: args.hostPath,
    hostOffset: args.hostOffset ?? 0,
    async reopen(opts = {}) {
      const prev = node;
      await prev.close();
      node = await args.openNode(opts, prev);
      return node;
    },
    verify,
    async dispose() {
      try {
        await node.close();
        await verify();
      } finally {
        await args.tmp?.cleanup();
      }
    },
  };
  return args.openNode(args.opts, undefined).then((n) => {
    node = n;
    return inst;
  }, async (err) => {
    await args.tmp?.cleanup();
    throw err;
  });
}

/** A host file of `size` zero bytes (sparse). */
async function hostFile(size: number): Promise<{ tmp: TmpDir; path: string }> {
  const tmp = await makeTmpDir();
  const path = tmp.path('disk.img');
  await writeFile(path, new Uint8Array(0));
  await truncate(path, size);
  return { tmp, path };
}

/** A host file with `size` image bytes at `base`, surrounded by sentinel bytes. */
async function slicedHostFile(base: number, size: number, tail: number) {
  const tmp = await makeTmpDir();
  const path = tmp.path('sliced.img');
  const head = pattern(base, SENTINEL_SEED);
  const after = pattern(tail, SENTINEL_SEED + 1);
  const all = new Uint8Array(base + size + tail);
  all.set(head, 0);
  all.set(after, base + size);
  await writeFile(path, all);
  return { tmp, path, sentinels: [[0, head], [base + size, after]] as [number, Uint8Array][], hostSize: all.byteLength };
}

function memoryData(prev: BlockNode | undefined): Uint8Array | undefined {
  if (!prev) return undefined;
  const mem = prev instanceof MemoryNode ? prev : prev.file;
  return mem instanceof MemoryNode ? mem.contents.slice() : undefined;
}

const native = nativeStatus.loaded;

function fileStack(name: string, alignment: number, build: (path: string, o: StackOpenOptions) => Promise<BlockNode>,
  extra: Partial<StackFeatures> = {}, unavailable: () => string | undefined = () => undefined): Stack {
  return {
    name,
    features: { persistent: true, hostFile: true, punchesHoles: true, discardZeroes: true, alignment, ...extra },
    unavailable,
    async create(size, opts = {}) {
      const { tmp, path } = await hostFile(size);
      return instance({ tmp, hostPath: path, hostSize: size, opts, openNode: (o) => build(path, o) });
    },
  };
}

function slicedStack(name: string, base: number, tail: number, alignment: number,
  build: (path: string, base: number, size: number, o: StackOpenOptions) => Promise<BlockNode>, discardZeroes: boolean): Stack {
  return {
    name,
    features: { persistent: true, hostFile: true, punchesHoles: false, discardZeroes, alignment },
    unavailable: () => undefined,
    async create(size, opts = {}) {
      const f = await slicedHostFile(base, size, tail);
      return instance({
        tmp: f.tmp, hostPath: f.path, hostOffset: base, sentinels: f.sentinels, hostSize: f.hostSize, opts,
        openNode: (o) => build(f.path, base, size, o),
      });
    },
  };
}

const rawFile4kSpec = (filename: string, o: StackOpenOptions, extra: Record<string, unknown> = {}): NodeSpec => ({
  driver: 'raw',
  ...extra,
  ...(o.detectZeroes ? { 'detect-zeroes': o.detectZeroes } : {}),
  file: { driver: 'file', filename, 'request-alignment': 4096 },
});

export const stacks: readonly Stack[] = [
  {
    name: 'memory',
    features: { persistent: true, hostFile: false, punchesHoles: false, discardZeroes: true, alignment: 1 },
    unavailable: () => undefined,
    create: (size, opts = {}) => instance({
      opts,
      openNode: async (o, prev) => new MemoryNode({ size, data: memoryData(prev), ...o }),
    }),
  },
  {
    name: 'null',
    features: { persistent: false, hostFile: false, punchesHoles: false, discardZeroes: true, alignment: 1 },
    unavailable: () => undefined,
    create: (size, opts = {}) => instance({ opts, openNode: async (o) => new NullNode({ size, ...o }) }),
  },
  fileStack('file', 1, (filename, o) => FileNode.open({ filename, ...o })),
  // O_DIRECT aligns to what the file system asks (often 512); 4 KiB keeps the promise fixed.
  fileStack('file-direct', 4096, (filename, o) => FileNode.open({ filename, cache: 'none', requestAlignment: 4096, ...o }), {},
    () => (native ? undefined : `cache=none needs the native addon (${nativeStatus.reason})`)),
  {
    name: 'raw-over-memory',
    features: { persistent: true, hostFile: false, punchesHoles: false, discardZeroes: true, alignment: 1 },
    unavailable: () => undefined,
    create: (size, opts = {}) => instance({
      opts,
      openNode: async (o, prev) => new RawNode(new MemoryNode({ size, data: memoryData(prev), readOnly: o.readOnly }), o),
    }),
  },
  fileStack('raw-over-file', 1, async (filename, o) => new RawNode(await FileNode.open({ filename, readOnly: o.readOnly }), o)),
  fileStack('raw-over-file-4k', 4096, (filename, o) => open(rawFile4kSpec(filename, o), { readOnly: o.readOnly })),
  // Image bytes in the middle of a host file, at an offset that is not block aligned.
  slicedStack('raw-slice-over-file', 3000, 5000, 1, async (filename, base, size, o) => {
    const file = await FileNode.open({ filename, readOnly: o.readOnly });
    return new RawNode(file, { offset: base, size, ...o });
  }, true),
  // The same over a 4 KiB-aligned file: the file's layer read-modify-writes blocks that hold
  // sentinel bytes, which must survive.
  slicedStack('raw-slice-over-file-4k', 4096 + 1000, 4096 + 7, 1,
    (filename, base, size, o) => open(rawFile4kSpec(filename, o, { offset: base, size }), { readOnly: o.readOnly }), false),
  // An aligned slice: the raw node keeps the file's 4 KiB alignment.
  slicedStack('raw-aligned-slice-over-file-4k', 8192, 4096, 4096,
    (filename, base, size, o) => open(rawFile4kSpec(filename, o, { offset: base, size }), { readOnly: o.readOnly }), true),
  // Probed as raw: whole-sector (512-byte) requests, as QEMU does for probed images.
  fileStack('open-filename', 512, (filename, o) => open(filename, { readOnly: o.readOnly, detectZeroes: o.detectZeroes })),
  fileStack('open-json-4k', 4096, (filename, o) => open(`json:${JSON.stringify(rawFile4kSpec(filename, {}))}`,
    { readOnly: o.readOnly, detectZeroes: o.detectZeroes })),
  fileStack('filter-over-raw-file-4k', 4096,
    async (filename, o) => new PassthroughFilter(await open(rawFile4kSpec(filename, {}), { readOnly: o.readOnly }), o)),
  // A qcow2 image (4 KiB clusters) over an empty qcow2 backing image (64 KiB clusters), read
  // through copy-on-read: a read of what the suite has not written copies zero clusters.
  {
    name: 'copy-on-read-over-qcow2',
    features: { persistent: true, hostFile: false, punchesHoles: false, discardZeroes: false, alignment: 1 },
    unavailable: () => undefined,
    async create(size, opts = {}) {
      const tmp = await makeTmpDir();
      const top = tmp.path('top.qcow2');
      await createQcow2({ filename: tmp.path('base.qcow2'), size, options: { cluster_size: '65536' } });
      await createQcow2({ filename: top, size, options: { cluster_size: '4096', backing_file: 'base.qcow2', backing_fmt: 'qcow2' } });
      return instance({
        tmp, opts,
        // Read-only opens go without the filter: copy-on-read needs a writable image.
        openNode: (o) => open(top, { readOnly: o.readOnly, detectZeroes: o.detectZeroes, copyOnRead: !o.readOnly }),
      });
    },
  },
];

export function stack(name: string): Stack {
  const s = stacks.find((x) => x.name === name);
  if (!s) throw new Error(`no stack named ${name}`);
  return s;
}

/**
 * Why `s` cannot run here (to skip it), or undefined. With VDISK_REQUIRE_ORACLES=1 a stack that
 * cannot run is a failure rather than a skip.
 */
export function skipReason(s: Stack): string | undefined {
  const why = s.unavailable();
  if (why && process.env.VDISK_REQUIRE_ORACLES === '1') throw new Error(`stack ${s.name} cannot run: ${why}, and VDISK_REQUIRE_ORACLES=1`);
  return why;
}
