import { BlockError } from '../../../core/errors.js';
import { sizeToStr } from '../../../core/qemu-format.js';
import { MAX_L1_BYTES } from './constants.js';

/**
 * The qcow2 internal snapshot table (spec §8): parse, serialise, look up, and print as
 * `qemu-img info` does. Reading the table's bytes and acting on snapshots is the driver's job.
 */
export interface Qcow2Snapshot {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  /** Exact up to 2^53 ns (104 days of guest run time); beyond that it is rounded, not refused. */
  vmClockNsec: number;
  vmStateSize: number;
  /** Virtual disk size when the snapshot was taken; undefined when the entry does not say (v2). */
  diskSize: number | undefined;
  /** undefined when absent or -1 (icount was off). */
  icount: number | undefined;
  /** The entry's extra data as read, so bytes we do not know survive a rewrite. */
  extraData: Uint8Array;
}

/** QEMU's limits (block/qcow2.h): QCOW_MAX_SNAPSHOTS, QCOW_MAX_SNAPSHOTS_SIZE, QCOW_MAX_SNAPSHOT_EXTRA_DATA. */
export const MAX_SNAPSHOTS = 65536;
export const MAX_SNAPSHOT_TABLE_SIZE = 1024 * MAX_SNAPSHOTS;
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;

const ENTRY_HEADER = 40;
/** Extra data fields: vm_state_size_large (0–7), disk_size (8–15), icount (16–23). */
const EXTRA_VM_STATE = 8;
const EXTRA_DISK_SIZE = 16;
const EXTRA_ICOUNT = 24;
const ICOUNT_OFF = 0xffffffffffffffffn;
const MAX_U32 = 0xffffffff;

const align8 = (n: number) => (n + 7) & ~7;
const utf8 = new TextDecoder('utf-8');
const encoder = new TextEncoder();

function corrupt(message: string): BlockError {
  return new BlockError('E_CORRUPT', message, { op: 'read snapshot table' });
}

/** A 64-bit size or offset: refused past 2^53 rather than silently rounded. */
function exact64(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`${what} ${value} is out of range`);
  return Number(value);
}

export interface ParsedSnapshotTable {
  snapshots: Qcow2Snapshot[];
  /** Bytes the table covers, up to the end of the last name (QEMU's snapshots_size). */
  byteLength: number;
}

/** Parses `count` entries; `table` may be longer than the table (the rest is ignored). */
export function parseSnapshotTable(table: Uint8Array, count: number, version: number): Qcow2Snapshot[] {
  return parseSnapshotTableWithSize(table, count, version).snapshots;
}

export function parseSnapshotTableWithSize(table: Uint8Array, count: number, version: number): ParsedSnapshotTable {
  if (version !== 2 && version !== 3) throw new BlockError('EINVAL', `Unknown qcow2 version ${version}`);
  if (!Number.isInteger(count) || count < 0 || count > MAX_SNAPSHOTS) {
    throw corrupt(`Too many qcow2 snapshots: ${count} (at most ${MAX_SNAPSHOTS})`);
  }
  const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const limit = Math.min(table.byteLength, MAX_SNAPSHOT_TABLE_SIZE);
  const snapshots: Qcow2Snapshot[] = [];
  let end = 0;
  for (let i = 0; i < count; i++) {
    const start = align8(end);
    const need = (n: number) => {
      if (start + n <= limit) return;
      throw corrupt(start + n > MAX_SNAPSHOT_TABLE_SIZE
        ? `qcow2 snapshot table is too big (entry ${i} ends past ${MAX_SNAPSHOT_TABLE_SIZE} bytes)`
        : `qcow2 snapshot table entry ${i} is truncated`);
    };
    need(ENTRY_HEADER);
    const idSize = dv.getUint16(start + 12);
    const nameSize = dv.getUint16(start + 14);
    const extraSize = dv.getUint32(start + 36);
    if (extraSize > MAX_SNAPSHOT_EXTRA_DATA) {
      throw corrupt(`Too much extra metadata in qcow2 snapshot table entry ${i} (${extraSize} > ${MAX_SNAPSHOT_EXTRA_DATA} bytes)`);
    }
    // v3 requires vm_state_size_large and disk_size; QEMU itself opens such an image and only
    // `qemu-img check` reports the entry as incomplete.
    if (version >= 3 && extraSize < EXTRA_DISK_SIZE) {
      throw corrupt(`qcow2 snapshot table entry ${i} is incomplete (${extraSize} bytes of extra data, v3 needs ${EXTRA_DISK_SIZE})`);
    }
    need(ENTRY_HEADER + extraSize + idSize + nameSize);
    const x = start + ENTRY_HEADER;
    const icountRaw = extraSize >= EXTRA_ICOUNT ? dv.getBigUint64(x + 16) : ICOUNT_OFF;
    const idStart = x + extraSize;
    snapshots.push({
      l1TableOffset: exact64(dv.getBigUint64(start), `qcow2 snapshot table entry ${i}: L1 table offset`),
      l1Size: dv.getUint32(start + 8),
      id: utf8.decode(table.subarray(idStart, idStart + idSize)),
      name: utf8.decode(table.subarray(idStart + idSize, idStart + idSize + nameSize)),
      dateSec: dv.getUint32(start + 16),
      dateNsec: dv.getUint32(start + 20),
      vmClockNsec: Number(dv.getBigUint64(start + 24)),
      vmStateSize: extraSize >= EXTRA_VM_STATE
        ? exact64(dv.getBigUint64(x), `qcow2 snapshot table entry ${i}: VM state size`) : dv.getUint32(start + 32),
      diskSize: extraSize >= EXTRA_DISK_SIZE ? exact64(dv.getBigUint64(x + 8), `qcow2 snapshot table entry ${i}: disk size`) : undefined,
      // Signed, as QEMU prints it (PRId64, QAPI int).
      icount: icountRaw === ICOUNT_OFF ? undefined : Number(BigInt.asIntN(64, icountRaw)),
      extraData: table.slice(x, x + extraSize),
    });
    end = idStart + idSize + nameSize;
  }
  return { snapshots, byteLength: end };
}

/**
 * Serialises the table, each entry 8-byte aligned. The known extra-data fields are written
 * from the object (vm_state_size_large, disk_size, icount — as far as the entry has them, and
 * the entry grows to hold a disk size or icount that is set); bytes past them come from
 * `extraData`. QEMU writes at least 24 bytes of extra data; callers creating entries do the same.
 */
export function serializeSnapshotTable(snapshots: Qcow2Snapshot[]): Uint8Array {
  if (snapshots.length > MAX_SNAPSHOTS) throw invalid(`Too many qcow2 snapshots: ${snapshots.length}`);
  const entries = snapshots.map((s, i) => {
    const id = encoder.encode(s.id);
    const name = encoder.encode(s.name);
    if (id.byteLength > 0xffff || name.byteLength > 0xffff) throw invalid(`Snapshot ${i}: ID or name longer than 65535 bytes`);
    let extraSize = s.extraData.byteLength;
    if (s.diskSize !== undefined) extraSize = Math.max(extraSize, EXTRA_DISK_SIZE);
    if (s.icount !== undefined) extraSize = Math.max(extraSize, EXTRA_ICOUNT);
    if (s.vmStateSize > MAX_U32) extraSize = Math.max(extraSize, EXTRA_VM_STATE);
    if (extraSize > MAX_SNAPSHOT_EXTRA_DATA) throw invalid(`Snapshot ${i}: more than ${MAX_SNAPSHOT_EXTRA_DATA} bytes of extra data`);
    return { s, id, name, extraSize };
  });
  let size = 0;
  for (const e of entries) size = align8(size) + ENTRY_HEADER + e.extraSize + e.id.byteLength + e.name.byteLength;
  size = align8(size);
  if (size > MAX_SNAPSHOT_TABLE_SIZE) throw invalid(`qcow2 snapshot table would be ${size} bytes, more than ${MAX_SNAPSHOT_TABLE_SIZE}`);
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  let p = 0;
  entries.forEach(({ s, id, name, extraSize }, i) => {
    p = align8(p);
    dv.setBigUint64(p, u64(s.l1TableOffset, `Snapshot ${i} L1 table offset`));
    dv.setUint32(p + 8, u32(s.l1Size, `Snapshot ${i} L1 size`));
    dv.setUint16(p + 12, id.byteLength);
    dv.setUint16(p + 14, name.byteLength);
    dv.setUint32(p + 16, u32(s.dateSec, `Snapshot ${i} date`));
    dv.setUint32(p + 20, u32(s.dateNsec, `Snapshot ${i} date`));
    dv.setBigUint64(p + 24, u64(s.vmClockNsec, `Snapshot ${i} VM clock`));
    const vmState = u64(s.vmStateSize, `Snapshot ${i} VM state size`);
    // A state too big for 32 bits is written as 0 there, so that old readers see a disk-only
    // snapshot instead of a truncated one (QEMU does the same).
    dv.setUint32(p + 32, vmState > BigInt(MAX_U32) ? 0 : Number(vmState));
    dv.setUint32(p + 36, extraSize);
    const x = p + ENTRY_HEADER;
    out.set(s.extraData.subarray(0, extraSize), x);
    if (extraSize >= EXTRA_VM_STATE) dv.setBigUint64(x, vmState);
    if (extraSize >= EXTRA_DISK_SIZE) dv.setBigUint64(x + 8, s.diskSize === undefined ? 0n : u64(s.diskSize, `Snapshot ${i} disk size`));
    if (extraSize >= EXTRA_ICOUNT) dv.setBigUint64(x + 16, s.icount === undefined ? ICOUNT_OFF : i64(s.icount, `Snapshot ${i} icount`));
    out.set(id, x + extraSize);
    out.set(name, x + extraSize + id.byteLength);
    p = x + extraSize + id.byteLength + name.byteLength;
  });
  return out;
}

function invalid(message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'write snapshot table' });
}

function u32(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 0 || n > MAX_U32) throw invalid(`${what} ${n} does not fit 32 bits`);
  return n;
}

function u64(n: number, what: string): bigint {
  // Counters past 2^53 (VM clock, icount) come back rounded from the parser; still integers.
  if (!Number.isInteger(n) || n < 0 || n >= 2 ** 64) throw invalid(`${what} ${n} does not fit 64 bits`);
  return BigInt(n);
}

function i64(n: number, what: string): bigint {
  if (!Number.isInteger(n) || n < -(2 ** 63) || n >= 2 ** 63) throw invalid(`${what} ${n} does not fit 64 bits`);
  return BigInt.asUintN(64, BigInt(n));
}

/** ID first, then name: QEMU's find_snapshot_by_id_or_name() (used by `snapshot -a`, `-d`, `convert -l`). */
export function findSnapshot(snapshots: Qcow2Snapshot[], idOrName: string): Qcow2Snapshot | undefined {
  return snapshots.find((s) => s.id === idOrName) ?? snapshots.find((s) => s.name === idOrName);
}

/**
 * Why a snapshot's L1 table cannot be loaded, in QEMU's words (qcow2_validate_table for
 * "Snapshot L1 table"), or undefined when it can. QEMU opens an image with such a snapshot
 * (check reports it) and refuses only to load it, so this is asked when a snapshot is used.
 */
export function snapshotL1Problem(s: Qcow2Snapshot, clusterSize: number): string | undefined {
  if (s.l1Size * 8 > MAX_L1_BYTES) return 'Snapshot L1 table too large';
  if (s.l1TableOffset % clusterSize !== 0 || s.l1TableOffset + s.l1Size * 8 > Number.MAX_SAFE_INTEGER) return 'Snapshot L1 table offset invalid';
  return undefined;
}

/**
 * QEMU copies the strings into QEMUSnapshotInfo's fixed arrays (id_str[128], name[256]) with
 * pstrcpy before printing, so what qemu-img shows is cut to 127 and 255 bytes.
 */
const INFO_ID_BYTES = 127;
const INFO_NAME_BYTES = 255;

function truncateBytes(s: string, max: number): string {
  const bytes = encoder.encode(s);
  return bytes.byteLength <= max ? s : utf8.decode(bytes.subarray(0, max));
}

/** One element of `qemu-img info --output=json`'s "snapshots", in QEMU 7.2's key order. */
export function snapshotInfoJson(s: Qcow2Snapshot): Record<string, unknown> {
  const { sec, nsec } = splitClock(s.vmClockNsec);
  return {
    ...(s.icount === undefined ? {} : { icount: s.icount }),
    'vm-clock-nsec': nsec,
    name: truncateBytes(s.name, INFO_NAME_BYTES),
    'date-sec': s.dateSec,
    'date-nsec': s.dateNsec,
    'vm-clock-sec': sec,
    id: truncateBytes(s.id, INFO_ID_BYTES),
    'vm-state-size': s.vmStateSize,
  };
}

function splitClock(ns: number): { sec: number; nsec: number } {
  // Exact below 2^53, where a division could round up to the next second.
  const nsec = ns % 1e9;
  return { sec: (ns - nsec) / 1e9, nsec };
}

/** printf("%-Ns") / ("%Ns"): C pads by bytes, so a multi-byte name gets fewer spaces. */
function padBytes(s: string, width: number, left: boolean): string {
  const pad = ' '.repeat(Math.max(0, width - encoder.encode(s).byteLength));
  return left ? s + pad : pad + s;
}

const two = (n: number) => String(n).padStart(2, '0');

/** The lines `qemu-img info` and `qemu-img snapshot -l` print after "Snapshot list:" (header first). */
export function snapshotTableHuman(snapshots: Qcow2Snapshot[]): string[] {
  const header = padBytes('ID', 10, true) + padBytes('TAG', 17, true) + padBytes('VM SIZE', 8, false)
    + padBytes('DATE', 20, false) + padBytes('VM CLOCK', 13, false) + padBytes('ICOUNT', 11, false);
  return [header, ...snapshots.map((s) => {
    // Local time, as QEMU's g_date_time_new_from_unix_local().
    const d = new Date(s.dateSec * 1000);
    const date = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} `
      + `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
    const { sec, nsec } = splitClock(s.vmClockNsec);
    const clock = `${two(Math.floor(sec / 3600))}:${two(Math.floor(sec / 60) % 60)}:${two(sec % 60)}.`
      + String(Math.floor(nsec / 1e6)).padStart(3, '0');
    // Rows are "%-9s %-16s %8s…" (measured against qemu-img 7.2): a long ID or name pushes the
    // rest right but always keeps one space after it.
    return `${padBytes(truncateBytes(s.id, INFO_ID_BYTES), 9, true)} ${padBytes(truncateBytes(s.name, INFO_NAME_BYTES), 16, true)} `
      + `${padBytes(sizeToStr(s.vmStateSize), 8, false)}${padBytes(date, 20, false)}${padBytes(clock, 13, false)}`
      + padBytes(s.icount === undefined ? '' : String(s.icount), 11, false);
  })];
}
