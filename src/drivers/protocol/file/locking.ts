import { BlockError } from '../../../core/errors.js';
import type { NativeAddon } from '../../../native/index.js';

/*
 * Image locking as QEMU's file-posix lays it out, so vdisk and QEMU see each other. Each
 * permission bit i is a byte: a shared (read) OFD lock on byte 100+i says "I hold permission i";
 * one on byte 200+i says "I do not let others hold permission i". A conflict is found by testing
 * for an exclusive lock on the other byte of the pair.
 */
export const PERM = { CONSISTENT_READ: 0x1, WRITE: 0x2, WRITE_UNCHANGED: 0x4, RESIZE: 0x8 } as const;
const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'];
const PERM_BITS = PERM_NAMES.length;
const ALL = (1 << PERM_BITS) - 1;
const LOCK_PERM_BASE = 100;
const LOCK_SHARED_BASE = 200;

/**
 * The permissions QEMU 7.2 takes on an image file. A raw image (and qemu-io, qemu-nbd over raw)
 * takes read (+ write) and shares everything, so raw writers coexist as they do in QEMU. A
 * format that owns the file's layout (qcow2, VMDK) is `exclusive`: it also takes resize when
 * writable and lets no one else write or resize, as QEMU's format nodes do.
 */
export function permissionsFor(writable: boolean, exclusive: boolean): { perm: number; shared: number } {
  const all = PERM.CONSISTENT_READ | PERM.WRITE | PERM.WRITE_UNCHANGED | PERM.RESIZE;
  if (!exclusive) return { perm: PERM.CONSISTENT_READ | (writable ? PERM.WRITE : 0), shared: all };
  return writable
    ? { perm: PERM.CONSISTENT_READ | PERM.WRITE | PERM.RESIZE, shared: PERM.CONSISTENT_READ | PERM.WRITE_UNCHANGED }
    : { perm: PERM.CONSISTENT_READ, shared: PERM.CONSISTENT_READ | PERM.WRITE_UNCHANGED | PERM.RESIZE };
}

/** Takes the lock bytes for (perm, shared) on fd and fails with E_LOCKED if another holder conflicts. */
export async function applyLocks(addon: NativeAddon, fd: number, path: string, perm: number, shared: number): Promise<void> {
  for (let i = 0; i < PERM_BITS; i++) {
    const bit = 1 << i;
    if (perm & bit) lockByte(addon, fd, path, LOCK_PERM_BASE + i);
    if (~shared & ALL & bit) lockByte(addon, fd, path, LOCK_SHARED_BASE + i);
  }
  // An OFD lock lives as long as its open file description, which can briefly outlive the
  // descriptor that took it: a child between fork and exec holds a copy of every descriptor, so
  // a process that closes an image while spawning a program and reopens it at once can meet
  // its own lock. Such a holder lets go within milliseconds; a real one stays.
  for (let attempt = 0; ; attempt++) {
    const conflict = lockConflict(addon, fd, perm, shared);
    if (conflict === undefined) return;
    if (attempt === LOCK_RETRIES) throw locked(path, conflict);
    await new Promise((resolve) => setTimeout(resolve, LOCK_RETRY_MS));
  }
}

const LOCK_RETRIES = 5;
const LOCK_RETRY_MS = 10;

/** QEMU's message for the first permission another opener's locks deny us, if any. */
function lockConflict(addon: NativeAddon, fd: number, perm: number, shared: number): string | undefined {
  for (let i = 0; i < PERM_BITS; i++) {
    const bit = 1 << i;
    if (perm & bit && addon.ofdGetLock(fd, 'write', LOCK_SHARED_BASE + i, 1)) return `Failed to get "${PERM_NAMES[i]}" lock`;
    if (~shared & ALL & bit && addon.ofdGetLock(fd, 'write', LOCK_PERM_BASE + i, 1)) return `Failed to get shared "${PERM_NAMES[i]}" lock`;
  }
  return undefined;
}

function lockByte(addon: NativeAddon, fd: number, path: string, byte: number): void {
  if (!addon.ofdSetLock(fd, 'read', byte, 1)) throw locked(path, 'Failed to lock byte ' + byte);
}

function locked(path: string, what: string): BlockError {
  return new BlockError('E_LOCKED', `${what}; is another process using the image [${path}]?`, { op: 'open', path });
}
