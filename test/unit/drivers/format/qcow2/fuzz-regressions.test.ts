/**
 * Crashers found by the qcow2 fuzzer (test/fuzz/qcow2.fuzz.ts), minimised and kept as
 * deterministic images (DESIGN.md §11). Each scenario starts from the smallest valid qcow2 image
 * (`tinyQcow2`, which `qemu-img check` finds clean) and applies the minimised mutation as byte
 * literals at fixed offsets, then does what the fuzz case did. The assertions state the CORRECT
 * behaviour: every failure is a BlockError with a sensible code, promptly, in bounded memory,
 * and the image file does not balloon. They fail until the driver is fixed; each names the
 * proposed fix.
 *
 * Every scenario runs in a child process of its own: some of these bugs abort V8 ("FATAL ERROR:
 * invalid table size Allocation failed"), which would take the whole test file down, and some
 * run for tens of seconds.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { BlockNode } from '../../../../../src/core/block-node.js';
import { BlockError } from '../../../../../src/core/errors.js';
import { Qcow2Node } from '../../../../../src/drivers/format/qcow2/qcow2-node.js';
import { open } from '../../../../../src/registry/index.js';

const CLUSTER = 512;
const MiB = 1024 * 1024;

/**
 * The smallest valid qcow2 image: 512-byte clusters, a 64 KiB disk, 16-bit refcounts.
 *   cluster 0  header (v3: 112 bytes, no extensions)
 *   cluster 1  refcount table, entry 0 -> cluster 2
 *   cluster 2  refcount block: clusters 0 .. 5+extra have refcount 1
 *   cluster 3  L1 table, 2 entries: L1[0] -> cluster 4 (COPIED), L1[1] = 0
 *   cluster 4  L2 table: L2[0] -> cluster 5 (COPIED), the rest unallocated
 *   cluster 5  data of guest cluster 0 (0xab)
 *   cluster 6… `extra` clusters of zeros, refcounted (room for a snapshot table)
 * Offsets used by the patches: L2[i] at 2048 + 8 i; the snapshot table (when present) at 3072.
 */
export function tinyQcow2(opts: { version?: 2 | 3; extra?: number } = {}): Uint8Array {
  const version = opts.version ?? 3;
  const clusters = 6 + (opts.extra ?? 0);
  const b = new Uint8Array(clusters * CLUSTER);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, 0x514649fb);
  dv.setUint32(4, version);
  dv.setUint32(20, 9); // cluster_bits
  dv.setBigUint64(24, 65536n); // size
  dv.setUint32(36, 2); // l1_size
  dv.setBigUint64(40, 3n * 512n); // l1_table_offset
  dv.setBigUint64(48, 512n); // refcount_table_offset
  dv.setUint32(56, 1); // refcount_table_clusters
  if (version === 3) {
    dv.setUint32(96, 4); // refcount_order
    dv.setUint32(100, 112); // header_length
  }
  dv.setBigUint64(512, 1024n);
  for (let c = 0; c < clusters; c++) dv.setUint16(1024 + c * 2, 1);
  dv.setBigUint64(1536, (1n << 63n) | 2048n);
  dv.setBigUint64(2048, (1n << 63n) | 2560n);
  b.fill(0xab, 2560, 3072);
  return b;
}

/** The minimised mutation: big-endian bytes (hex) written at byte offsets. */
export function patch(image: Uint8Array, patches: readonly (readonly [number, string])[]): Uint8Array {
  const out = image.slice();
  for (const [at, hex] of patches) out.set(Buffer.from(hex, 'hex'), at);
  return out;
}

// ---- scenarios ---------------------------------------------------------------------------------

interface Step { op: string; ok: boolean; code?: string; error?: string }

interface Ctx {
  file: string;
  step(op: string, fn: () => Promise<unknown>): Promise<boolean>;
}

interface Scenario {
  name: string;
  /** What the fuzzer saw, and where. */
  found: string;
  /** The proposed fix, in src/ terms. */
  fix: string;
  image(): Uint8Array;
  run(ctx: Ctx): Promise<void>;
  /** BlockError codes that are a correct answer here. */
  codes: readonly string[];
  /** At least one step must fail with one of `codes` (false: succeeding is correct too). */
  mustFail: boolean;
  maxRssMiB?: number;
  /** The image file may not grow past this (bytes). */
  maxFileBytes?: number;
}

/** Opens writable, writes one cluster over guest cluster `cluster`, flushes and closes. */
async function writeOver(ctx: Ctx, cluster: number): Promise<void> {
  let node: BlockNode | undefined;
  await ctx.step('open rw', async () => {
    node = await open({ driver: 'qcow2', file: { driver: 'file', filename: ctx.file } });
  });
  if (!node) return;
  const n = node;
  await ctx.step(`write guest cluster ${cluster}`, () => n.write(cluster * CLUSTER, new Uint8Array(CLUSTER).fill(0x5a)));
  await ctx.step('flush', () => n.flush());
  await ctx.step('close', () => n.close());
}

/** Opens read-only, runs check('none'), closes. */
async function openAndCheck(ctx: Ctx): Promise<void> {
  let node: BlockNode | undefined;
  await ctx.step('open ro', async () => {
    node = await open({ driver: 'qcow2', file: { driver: 'file', filename: ctx.file }, 'read-only': true }, { readOnly: true });
  });
  if (!node) return;
  const n = node;
  if (n instanceof Qcow2Node) await ctx.step('check none', () => n.check('none'));
  await ctx.step('close', () => n.close());
}

/** A snapshot table at cluster 6 with one entry (v3: 24 bytes of extra data, ID "1"). */
function withSnapshot(fields: { l1Size?: number; extra?: number }): Uint8Array {
  const b = tinyQcow2({ extra: 1 });
  const dv = new DataView(b.buffer);
  dv.setUint32(60, 1); // nb_snapshots
  dv.setBigUint64(64, 3072n); // snapshots_offset
  dv.setBigUint64(3072, 1536n); // the snapshot's L1 = the active one
  dv.setUint32(3072 + 8, fields.l1Size ?? 2);
  dv.setUint16(3072 + 12, 1); // id_str_size
  dv.setUint32(3072 + 36, fields.extra ?? 24); // extra_data_size
  dv.setBigUint64(3072 + 48, 65536n); // disk_size
  dv.setBigUint64(3072 + 56, 0xffffffffffffffffn); // icount: off
  b[3072 + 64] = 0x31; // "1"
  return b;
}

/**
 * 64 KiB clusters: header, refcount table, refcount block (clusters 0–14 at 1), active L1 (one
 * entry -> cluster 4), an L2 table whose 8192 entries all map the data cluster 5, a snapshot
 * table (cluster 6) whose one entry's L1 (clusters 7–14, 65536 entries) names that same L2 table
 * 65536 times. Every reference is there; only the refcounts are too low, which check reports.
 */
function sharedL2Snapshot(): Uint8Array {
  const cs = 65536;
  const b = new Uint8Array(15 * cs);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, 0x514649fb);
  dv.setUint32(4, 3);
  dv.setUint32(20, 16);
  dv.setBigUint64(24, 512n * 1024n * 1024n); // one L2 table's worth
  dv.setUint32(36, 1);
  dv.setBigUint64(40, 3n * 65536n);
  dv.setBigUint64(48, 65536n);
  dv.setUint32(56, 1);
  dv.setUint32(60, 1); // nb_snapshots
  dv.setBigUint64(64, 6n * 65536n);
  dv.setUint32(96, 4);
  dv.setUint32(100, 112);
  dv.setBigUint64(cs, 2n * 65536n);
  for (let c = 0; c < 15; c++) dv.setUint16(2 * cs + c * 2, 1);
  dv.setBigUint64(3 * cs, (1n << 63n) | (4n * 65536n));
  for (let i = 0; i < 8192; i++) dv.setBigUint64(4 * cs + i * 8, (1n << 63n) | (5n * 65536n));
  b.fill(0xab, 5 * cs, 6 * cs);
  const sn = 6 * cs;
  dv.setBigUint64(sn, 7n * 65536n);
  dv.setUint32(sn + 8, 65536);
  dv.setUint16(sn + 12, 1);
  dv.setUint32(sn + 36, 24);
  dv.setBigUint64(sn + 48, 512n * 1024n * 1024n);
  dv.setBigUint64(sn + 56, 0xffffffffffffffffn);
  b[sn + 64] = 0x31;
  for (let i = 0; i < 65536; i++) dv.setBigUint64(7 * cs + i * 8, 4n * 65536n);
  return b;
}

/**
 * 64 KiB clusters, 16-bit refcounts: every one of the refcount table's 8192 entries names the
 * same refcount block, and that block says every cluster it covers is in use (0xffff). So the
 * first allocation finds no free cluster below 8192 * 32768 clusters (16 TiB). A 320 KiB file.
 */
function sharedFullRefcountBlock(): Uint8Array {
  const cs = 65536;
  const b = new Uint8Array(5 * cs);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, 0x514649fb);
  dv.setUint32(4, 3);
  dv.setUint32(20, 16);
  dv.setBigUint64(24, 512n * 1024n * 1024n);
  dv.setUint32(36, 1);
  dv.setBigUint64(40, 3n * 65536n);
  dv.setBigUint64(48, 65536n);
  dv.setUint32(56, 1);
  dv.setUint32(96, 4);
  dv.setUint32(100, 112);
  for (let i = 0; i < 8192; i++) dv.setBigUint64(cs + i * 8, 2n * 65536n);
  b.fill(0xff, 2 * cs, 3 * cs);
  dv.setBigUint64(3 * cs, (1n << 63n) | (4n * 65536n));
  return b;
}

const FREE_FIX = 'refcounts.ts Refcounts.applyFrees (~line 207-213): when the current refcount is already 0, do not call set() '
  + '(which creates a refcount block, growing the table to cover the bogus offset) - count it as a corruption ("refcount of cluster N '
  + 'would drop below 0"), as QEMU update_refcount does (-EINVAL, image marked corrupt), and skip it. Belt and braces: '
  + 'Refcounts.growTable (~line 228) must refuse to grow the table past MAX_REFTABLE_BYTES (8 MiB) with a BlockError '
  + '(E_CORRUPT/ENOSPC) and must not spread arrays into calls (Math.max(...blocks) at ~244, [...this.table, ...new Array(n)] at ~249, '
  + 'this.table.splice(0, n, ...table) at ~257): they overflow the stack past ~120k entries even on a legitimately large image. '
  + 'And l2-entry.ts decode(): a ZERO_ALLOC/NORMAL host offset at or past 2^56 (MAX_HOST_OFFSET in QEMU) is invalid.';

/**
 * The fuzzer's v3-512 seed, minimised: L2 entry 5 byte 1 00 -> 61, i.e. a ZERO_ALLOC entry (no
 * COPIED bit) whose host offset lies far past the end of the file. Writing the cluster allocates
 * a new one and frees the old host cluster at flush; that cluster has refcount 0 and no refcount
 * block, so Refcounts.set() grows the refcount table to cover it.
 */
const farFree = (name: string, host: bigint, found: string): Scenario => ({
  name,
  found,
  fix: FREE_FIX,
  image: () => patch(tinyQcow2(), [[2048 + 8, (host | 1n).toString(16).padStart(16, '0')]]),
  run: (ctx) => writeOver(ctx, 1),
  // QEMU logs the failed free and carries on; refusing with E_CORRUPT is as good.
  codes: ['E_CORRUPT'],
  mustFail: false,
  maxFileBytes: MiB,
});

export const SCENARIOS: Scenario[] = [
  {
    name: 'control: the unmutated image writes, flushes and closes',
    found: 'not a crasher: shows that tinyQcow2 is a valid image and that the harness passes a correct driver',
    fix: '-',
    image: () => tinyQcow2(),
    run: async (ctx) => {
      await writeOver(ctx, 1);
      await openAndCheck(ctx);
    },
    codes: [],
    mustFail: false,
    maxFileBytes: MiB,
  },
  farFree('free of a ZERO_ALLOC cluster at 0x61000000000000 (RangeError: stack overflow in growTable)', 0x61000000000000n,
    'case 2759312572 (seed 2, v3-512): L2@2048[5] @2089: 00 -> 61; RangeError: Maximum call stack size exceeded at Refcounts.growTable (refcounts.ts:244) <- newBlock <- set <- applyFrees <- flushMetadata'),
  farFree('free of a ZERO_ALLOC cluster at 1 TiB (RangeError: stack overflow in growTable splice)', 0x10000000000n,
    'case 1012631223 (seed 2, zstd-64k): L1[0] -> the refcount block, whose 16-bit counts read as ZERO_ALLOC entries at ~2^48; RangeError at refcounts.ts:257 (this.table.splice(0, n, ...table))'),
  farFree('free of a ZERO_ALLOC cluster at 32 TiB (V8 aborts the process)', 0x200000000000n,
    'case 4103312079 (seed 1, zstd-512): L1[0] -> a compressed data cluster read as an L2 table; the process dies with "Fatal JavaScript invalid size error" / "invalid table size Allocation failed"'),
  farFree('free of a ZERO_ALLOC cluster at 4 GiB (the image file grows to 4 GiB)', 0x100000000n,
    'the same path with a smaller offset: no exception, but newBlock() puts a refcount block on the freed cluster itself, 4 GiB into the file. '
      + '(QEMU 7.2 grows the file too here, and logs "qcow2_free_clusters failed"; a refcount that is already 0 needs no block, so vdisk can do better.)'),
  {
    name: 'refcount table entry 0 cleared: an allocating write never returns (endless loop in Refcounts.allocate)',
    found: 'case 2295214622 (seed 10, v3-64k), minimised to reftable[0] @65541: 02 -> 00; the write hangs the event loop (timers never fire). '
      + 'Clusters 0.. have no refcount block, so allocate() finds cluster 0 "free", firstMissingBlock() asks for a block at cluster 0, '
      + 'newBlock() records it as table[0] = 0 * cluster_size = 0, which still reads as "no block", and allocate() loops on resolved promises forever. '
      + 'QEMU 7.2: "Preventing invalid write on metadata", the write fails with EIO and the image is marked corrupt.',
    fix: 'refcounts.ts Refcounts.newBlock (~line 111): refuse offset 0 with E_CORRUPT (QEMU alloc_refcount_block: "Preventing invalid allocation of refcount '
      + 'block at offset 0"), so allocate() (~line 127) cannot loop; and allocate() should never hand out cluster 0 nor place a refcount block on other '
      + 'metadata (reftable, L1, L2, snapshot table): run the overlap check of qcow2-node.ts checkOverlap (~line 816) for refcount blocks and new L2 tables too, '
      + 'marking the image corrupt as QEMU does.',
    image: () => patch(tinyQcow2(), [[512, '0000000000000000']]),
    run: (ctx) => writeOver(ctx, 1),
    codes: ['E_CORRUPT', 'EIO'],
    mustFail: true,
  },
  {
    name: 'snapshot entry with extra_data_size 0xffffffff (RangeError: Invalid typed array length)',
    found: 'cases 2480330986 and 4120073884 (seed 1, snap-64k): snapshot extra_data_size 0x18 -> 0x8 / 0x7fffffff shifts the next entry onto garbage; '
      + 'index.ts readSnapshots allocates 40 + extra_data_size + id + name bytes per entry before snapshots.ts checks the 1024-byte limit',
    fix: 'index.ts readSnapshots (~line 43-44): check extra_data_size <= MAX_SNAPSHOT_EXTRA_DATA (1024) (and, for v3, >= 16) before allocating the entry, '
      + 'throwing the same E_CORRUPT as parseSnapshotTable; then an entry is at most 40 + 1024 + 2 * 65535 bytes and the table stays within MAX_SNAPSHOT_TABLE_SIZE.',
    image: () => withSnapshot({ extra: 0xffffffff }),
    run: openAndCheck,
    codes: ['E_CORRUPT'],
    mustFail: true,
  },
  {
    name: 'snapshot entry with extra_data_size 0x7fffffff (2 GiB allocated and copied before the check)',
    found: 'case 4120073884 (seed 1, snap-64k): hang (> 10 s) and RSS +1.8 GiB; case 274878796 (snap-v2-512, snapshots_offset -> a data cluster): RSS +539 MiB',
    fix: 'as above: index.ts readSnapshots must refuse extra_data_size > 1024 before `new Uint8Array(…)` (~line 44) and before concatenating the chunks (~line 50).',
    image: () => withSnapshot({ extra: 0x7fffffff }),
    run: openAndCheck,
    codes: ['E_CORRUPT'],
    mustFail: true,
  },
  {
    name: 'snapshot with l1_size 0xffffffff (check: RangeError Invalid typed array length / Map maximum size exceeded)',
    found: 'case 636724425 (seed 1, snap-64k): snapshot l1_size 0x1 -> 0xffffffff; RangeError: Invalid typed array length: 34359738360 at checkQcow2 (check.ts:116); '
      + 'with 512-byte clusters ref() first fills a Map with 67 M clusters (27 s, 780 MiB, then "Map maximum size exceeded")',
    fix: 'as QEMU: the image opens and check reports the snapshot ("L1 table is too large; snapshot table entry corrupted") without reading its L1 '
      + 'table; only loading the snapshot fails (index.ts usableSnapshot: "Snapshot L1 table too large", E_CORRUPT).',
    image: () => withSnapshot({ l1Size: 0xffffffff }),
    run: async (ctx) => {
      await openAndCheck(ctx);
      await ctx.step('open the snapshot', async () => {
        const node = await open({ driver: 'qcow2', file: { driver: 'file', filename: ctx.file }, snapshot: '1' }, { readOnly: true });
        await node.close();
      });
    },
    codes: ['E_CORRUPT'],
    mustFail: true,
  },
  {
    name: 'snapshot L1 naming one L2 table 65536 times (check walks it 65536 times: a hang)',
    found: 'case 1792952417 (seed 1 of the 100k run, snap-64k): snapshot l1_size 1 -> 0xba01 (one random byte), so the snapshot L1 runs on over L2 tables '
      + 'and data; check(\'none\') took 5.8 s on a 1.5 MB image and the case passed its 10 s budget (check ran in both phases). checkQcow2 walks '
      + 'every L2 table once per L1 entry that names it: cost = L1 entries x 8192, up to 4 Mi x 8192 decodes (~20 min) for a 33 MiB file.',
    fix: 'check.ts checkQcow2 walkL1 (~line 66-110): walk each distinct L2 table once per L1 table and add its references as many times as it is named '
      + '(or count the duplicate L1 references as corruptions, since one L1 naming a table twice is already inconsistent); then the work is bounded by '
      + 'the file size, not by l1_size x entries.',
    image: () => sharedL2Snapshot(),
    run: openAndCheck,
    codes: ['E_CORRUPT'],
    mustFail: false,
  },
  {
    name: 'refcount table naming one full refcount block 8192 times (the first allocation scans 268 M clusters: a hang)',
    found: 'case 3962041007 (seed 3 of the 100k run, v3-64k-refcount1): reftable[0..8192) <- 0x20000 and that refcount block filled with 0xff, so with '
      + '1-bit refcounts 8192 x 524288 clusters look used; the case hung past its 10 s budget. (First seen by review while minimising the reftable[0] hang.) '
      + 'Refcounts.allocate awaits get(i) once per cluster from freeHint up, ~18 ms per 32768-cluster block, so this 320 KiB image makes the first '
      + 'allocating write take ~140 s (1024 entries: 17 s). QEMU 7.2 on the same image: 3.5 s, then "Write failed: File too large".',
    fix: 'refcounts.ts Refcounts.allocate (~line 127-143): scan a loaded refcount block synchronously (readEntry over the block\'s bytes, no await per '
      + 'cluster) and skip a block with no zero entry in one step; and refuse a refcount table that names one block twice (Refcounts.load, ~line 58-72: '
      + 'E_CORRUPT, as QEMU check reports), which is what lets a small file claim terabytes of used clusters.',
    image: () => sharedFullRefcountBlock(),
    run: async (ctx) => {
      let node: BlockNode | undefined;
      await ctx.step('open rw', async () => {
        node = await open({ driver: 'qcow2', file: { driver: 'file', filename: ctx.file } });
      });
      if (!node) return;
      const n = node;
      await ctx.step('write 4 KiB at guest 0 (allocates)', () => n.write(0, new Uint8Array(4096).fill(0x5a)));
      await ctx.step('flush', () => n.flush());
      await ctx.step('close', () => n.close());
    },
    codes: ['E_CORRUPT', 'ENOSPC', 'ERANGE'],
    mustFail: false,
  },
];

// ---- the child: one scenario, one JSON line ------------------------------------------------------

interface Outcome { steps: Step[]; ms: number; rssGrowthMiB: number; fileBytes: number; headerIntact: boolean }

/** The header without the feature bits (a driver may mark the image corrupt or clear autoclear bits). */
const headerBytes = (b: Uint8Array) => Buffer.concat([b.subarray(0, 72), b.subarray(96, 112)]).toString('hex');

async function runScenario(s: Scenario): Promise<Outcome> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vdisk-qcow2-regression-'));
  const file = path.join(dir, 'img.qcow2');
  const image = s.image();
  writeFileSync(file, image);
  const steps: Step[] = [];
  const rss0 = process.memoryUsage().rss;
  let peak = rss0;
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 20);
  const t0 = Date.now();
  try {
    await s.run({
      file,
      async step(op, fn) {
        try {
          await fn();
          steps.push({ op, ok: true });
          return true;
        } catch (err) {
          const e = err as Error;
          steps.push(err instanceof BlockError
            ? { op, ok: false, code: err.code, error: err.message }
            : { op, ok: false, error: `${e?.constructor?.name ?? typeof err}: ${String(e?.stack ?? err)}` });
          return false;
        }
      },
    });
  } finally {
    clearInterval(sampler);
  }
  peak = Math.max(peak, process.memoryUsage().rss);
  const ms = Date.now() - t0;
  const fileBytes = statSync(file).size;
  const headerIntact = headerBytes(readFileSync(file).subarray(0, 112)) === headerBytes(image);
  rmSync(dir, { recursive: true, force: true });
  return { steps, ms, rssGrowthMiB: Math.round((peak - rss0) / MiB), fileBytes, headerIntact };
}

const CHILD_ENV = 'VDISK_QCOW2_FUZZ_REGRESSION';

if (process.env[CHILD_ENV] !== undefined) {
  const s = SCENARIOS[Number(process.env[CHILD_ENV])]!;
  runScenario(s).then((r) => {
    process.stdout.write(`RESULT ${JSON.stringify(r)}\n`);
  }, (err: unknown) => {
    process.stdout.write(`RESULT ${JSON.stringify({ harnessError: String((err as Error)?.stack ?? err) })}\n`);
  });
} else {
  const self = fileURLToPath(import.meta.url);
  SCENARIOS.forEach((s, index) => {
    test(`qcow2 fuzz regression: ${s.name}`, { timeout: 90_000 }, async () => {
      const env: NodeJS.ProcessEnv = { ...process.env, [CHILD_ENV]: String(index) };
      delete env.NODE_TEST_CONTEXT;
      const { code, signal, stdout, stderr } = await new Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>((resolve) => {
        // A 1 GiB heap makes a runaway allocation end (abort) instead of grinding for minutes.
        const args = ['--import', import.meta.resolve('tsx'), '--max-old-space-size=1024', self];
        const child = execFile(process.execPath, args, { env, timeout: 30_000, maxBuffer: 64 * MiB }, (_err, out, errOut) => {
          resolve({ code: child.exitCode, signal: child.signalCode, stdout: out, stderr: errOut });
        });
      });
      const why = `\nfound: ${s.found}\nproposed fix: ${s.fix}`;
      const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
      assert.ok(line, `the scenario's process died (exit ${code}, signal ${signal}) without an answer: ${stderr.split('\n').filter((l) => /error|fatal|abort/i.test(l)).slice(0, 3).join(' | ') || 'timed out after 30 s'}${why}`);
      const r = JSON.parse(line.slice(7)) as Outcome & { harnessError?: string };
      assert.equal(r.harnessError, undefined);
      const log = r.steps.map((st) => `  ${st.op}: ${st.ok ? 'ok' : st.code ?? st.error}`).join('\n');
      for (const st of r.steps) {
        if (st.ok) continue;
        assert.ok(st.code !== undefined, `${st.op} failed with something other than a BlockError:\n${st.error}${why}`);
        assert.ok(s.codes.includes(st.code), `${st.op} failed with ${st.code} (${st.error}); expected ${s.codes.join(' or ')}\n${log}${why}`);
      }
      if (s.mustFail) assert.ok(r.steps.some((st) => !st.ok), `expected a BlockError (${s.codes.join(' or ')}), every step succeeded:\n${log}${why}`);
      assert.ok(r.rssGrowthMiB <= (s.maxRssMiB ?? 128), `RSS grew by ${r.rssGrowthMiB} MiB (at most ${s.maxRssMiB ?? 128}):\n${log}${why}`);
      assert.ok(r.headerIntact, `the image header (cluster 0) was overwritten:\n${log}${why}`);
      if (s.maxFileBytes !== undefined) assert.ok(r.fileBytes <= s.maxFileBytes, `the image file grew to ${r.fileBytes} bytes (at most ${s.maxFileBytes}):\n${log}${why}`);
    });
  });
}
