/**
 * Unit tests for the native addon (native/*.cc) and its loader (src/native/index.ts).
 * They exercise the real syscalls on files in os.tmpdir(); everything that needs the addon
 * is skipped, with the loader's reason, when it is not built.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';

import { FADV, FALLOC, native, nativeStatus, validateAddon, type NativeAddon } from '../../../src/native/index.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const LOADER = path.join(ROOT, 'src', 'native', 'index.ts');
const KiB = 1024;
const MiB = 1024 * KiB;
/** An fd number far above any RLIMIT_NOFILE, so it is never open. */
const BAD_FD = 999_999;

const skipReason = native ? false : `native addon not loaded: ${nativeStatus.reason ?? 'unknown reason'}`;

/** The addon, for use inside tests that only run when it loaded. */
function addon(): NativeAddon {
  assert.ok(native, 'native addon should be loaded here');
  return native;
}

/** Asserts that `err` is an errno-style error from the addon. */
function assertErrno(err: unknown, syscall: string, code?: string | readonly string[]): true {
  assert.ok(err instanceof Error, `expected an Error, got ${String(err)}`);
  const e = err as NodeJS.ErrnoException;
  assert.equal(typeof e.code, 'string', 'error.code should be a string');
  assert.match(e.code!, /^E[A-Z0-9]+$/);
  assert.equal(typeof e.errno, 'number');
  assert.ok(e.errno! > 0, 'errno should be positive');
  assert.equal(e.syscall, syscall);
  assert.ok(e.message.startsWith(`${syscall}: `), `message "${e.message}" should name ${syscall}`);
  if (typeof code === 'string') assert.equal(e.code, code);
  else if (code) assert.ok(code.includes(e.code!), `code ${e.code} not in ${code.join('/')}`);
  return true;
}

function isTypeError(err: unknown): true {
  assert.ok(err instanceof TypeError, `expected TypeError, got ${String(err)}`);
  assert.match(String((err as NodeJS.ErrnoException).code), /^ERR_(INVALID_ARG_TYPE|INVALID_ARG_VALUE|MISSING_ARGS)$/);
  return true;
}

function isRangeError(err: unknown): true {
  assert.ok(err instanceof RangeError, `expected RangeError, got ${String(err)}`);
  return true;
}

/** Data runs [start, end) as reported by walking SEEK_DATA / SEEK_HOLE. */
function dataRuns(n: NativeAddon, fd: number): [number, number][] {
  const runs: [number, number][] = [];
  let off = 0;
  for (;;) {
    const data = n.seekData(fd, off);
    if (data === -1) break;
    const hole = n.seekHole(fd, data);
    assert.ok(hole > data, `hole ${hole} should follow data ${data}`);
    runs.push([data, hole]);
    off = hole;
  }
  return runs;
}

function readAt(fd: number, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  assert.equal(fs.readSync(fd, buf, 0, length, offset), length);
  return buf;
}

function filled(length: number, byte: number): Buffer {
  return Buffer.alloc(length, byte);
}

describe('native addon', { skip: skipReason }, () => {
  let dir = '';
  let counter = 0;
  /** A fresh path in the temp dir. */
  const tmp = (name: string): string => path.join(dir, `${counter++}-${name}`);

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdisk-native-'));
  });
  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('loads and reports itself loaded', () => {
    assert.deepEqual(nativeStatus, { loaded: true });
    for (const fn of ['seekData', 'seekHole', 'fallocate', 'fadvise', 'ficlone', 'ficloneRange', 'fdatasync',
      'ofdSetLock', 'ofdGetLock', 'blockDeviceSize', 'blockSectorSize', 'isZero', 'alignedBuffer'] as const) {
      assert.equal(typeof addon()[fn], 'function', fn);
    }
  });

  describe('seekData / seekHole', () => {
    it('find exactly the written runs of a sparse file', () => {
      const n = addon();
      const p = tmp('sparse.img');
      const fd = fs.openSync(p, 'w+');
      try {
        fs.ftruncateSync(fd, MiB);
        fs.writeSync(fd, filled(4 * KiB, 0xaa), 0, 4 * KiB, 0);
        fs.writeSync(fd, filled(4 * KiB, 0xbb), 0, 4 * KiB, 64 * KiB);
        fs.writeSync(fd, filled(8 * KiB, 0xcc), 0, 8 * KiB, 512 * KiB);
        fs.fsyncSync(fd);
        assert.deepEqual(dataRuns(n, fd), [
          [0, 4 * KiB],
          [64 * KiB, 68 * KiB],
          [512 * KiB, 520 * KiB],
        ]);
        assert.equal(n.seekHole(fd, 0), 4 * KiB);
        assert.equal(n.seekData(fd, 4 * KiB), 64 * KiB);
        assert.equal(n.seekData(fd, 66 * KiB), 66 * KiB, 'inside data: the offset itself');
        assert.equal(n.seekHole(fd, 600 * KiB), 600 * KiB, 'inside a hole: the offset itself');
        assert.equal(n.seekData(fd, 520 * KiB), -1, 'no data after the last run');
        assert.equal(n.seekData(fd, MiB), -1, 'at EOF');
        assert.equal(n.seekHole(fd, MiB), -1, 'at EOF');
        assert.equal(n.seekData(fd, 10 * MiB), -1, 'past EOF');
      } finally {
        fs.closeSync(fd);
      }
    });

    it('treat EOF as a hole when data runs to the end', () => {
      const n = addon();
      const p = tmp('dense.img');
      fs.writeFileSync(p, filled(12 * KiB, 1));
      const fd = fs.openSync(p, 'r');
      try {
        assert.deepEqual(dataRuns(n, fd), [[0, 12 * KiB]]);
      } finally {
        fs.closeSync(fd);
      }
    });

    it('find nothing in an empty file', () => {
      const n = addon();
      const p = tmp('empty.img');
      fs.writeFileSync(p, '');
      const fd = fs.openSync(p, 'r');
      try {
        assert.equal(n.seekData(fd, 0), -1);
        assert.equal(n.seekHole(fd, 0), -1);
      } finally {
        fs.closeSync(fd);
      }
    });

    it('throw EBADF on a closed fd', () => {
      assert.throws(() => addon().seekData(BAD_FD, 0), (e) => assertErrno(e, 'lseek', 'EBADF'));
      assert.throws(() => addon().seekHole(BAD_FD, 0), (e) => assertErrno(e, 'lseek', 'EBADF'));
    });
  });

  describe('fallocate', () => {
    it('returns a promise', async () => {
      const p = tmp('promise.img');
      const fd = fs.openSync(p, 'w+');
      try {
        const r = addon().fallocate(fd, 0, 0, 4 * KiB);
        assert.ok(r instanceof Promise);
        assert.equal(await r, undefined);
      } finally {
        fs.closeSync(fd);
      }
    });

    it('PUNCH_HOLE|KEEP_SIZE makes a hole that reads zero and frees blocks', async () => {
      const n = addon();
      const p = tmp('punch.img');
      fs.writeFileSync(p, filled(256 * KiB, 0x55));
      const fd = fs.openSync(p, 'r+');
      try {
        fs.fsyncSync(fd);
        const before = fs.fstatSync(fd);
        await n.fallocate(fd, FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE, 64 * KiB, 64 * KiB);
        const afterStat = fs.fstatSync(fd);
        assert.equal(afterStat.size, 256 * KiB, 'size kept');
        assert.equal(before.blocks - afterStat.blocks, (64 * KiB) / 512, 'blocks drop by the punched range');
        assert.ok(readAt(fd, 64 * KiB, 64 * KiB).equals(Buffer.alloc(64 * KiB)), 'hole reads zero');
        assert.ok(readAt(fd, 0, 64 * KiB).equals(filled(64 * KiB, 0x55)), 'data before kept');
        assert.ok(readAt(fd, 128 * KiB, 128 * KiB).equals(filled(128 * KiB, 0x55)), 'data after kept');
        assert.deepEqual(dataRuns(n, fd), [
          [0, 64 * KiB],
          [128 * KiB, 256 * KiB],
        ]);
      } finally {
        fs.closeSync(fd);
      }
    });

    it('ZERO_RANGE zeroes bytes and keeps the size', async () => {
      const p = tmp('zero.img');
      fs.writeFileSync(p, filled(64 * KiB, 0x77));
      const fd = fs.openSync(p, 'r+');
      try {
        await addon().fallocate(fd, FALLOC.ZERO_RANGE, 4 * KiB, 8 * KiB);
        assert.equal(fs.fstatSync(fd).size, 64 * KiB);
        assert.ok(readAt(fd, 4 * KiB, 8 * KiB).equals(Buffer.alloc(8 * KiB)));
        assert.ok(readAt(fd, 0, 4 * KiB).equals(filled(4 * KiB, 0x77)));
        assert.ok(readAt(fd, 12 * KiB, 52 * KiB).equals(filled(52 * KiB, 0x77)));
        // Unaligned edges are zeroed too (the kernel writes the partial blocks).
        await addon().fallocate(fd, FALLOC.ZERO_RANGE, 20 * KiB + 100, 1000);
        const buf = readAt(fd, 20 * KiB, 2 * KiB);
        assert.ok(buf.subarray(0, 100).equals(filled(100, 0x77)));
        assert.ok(buf.subarray(100, 1100).equals(Buffer.alloc(1000)));
        assert.ok(buf.subarray(1100).equals(filled(2 * KiB - 1100, 0x77)));
      } finally {
        fs.closeSync(fd);
      }
    });

    it('mode 0 allocates and grows the file; KEEP_SIZE allocates without growing', async () => {
      const p = tmp('alloc.img');
      const fd = fs.openSync(p, 'w+');
      try {
        await addon().fallocate(fd, 0, 0, MiB);
        let st = fs.fstatSync(fd);
        assert.equal(st.size, MiB);
        assert.ok(st.blocks * 512 >= MiB, `allocated ${st.blocks * 512} bytes`);
        assert.ok(readAt(fd, 0, MiB).equals(Buffer.alloc(MiB)), 'preallocated space reads zero');
        const blocksBefore = st.blocks;
        await addon().fallocate(fd, FALLOC.KEEP_SIZE, MiB, MiB);
        st = fs.fstatSync(fd);
        assert.equal(st.size, MiB, 'KEEP_SIZE keeps the size');
        assert.ok(st.blocks * 512 >= blocksBefore * 512 + MiB, 'but allocates beyond it');
      } finally {
        fs.closeSync(fd);
      }
    });

    it('rejects PUNCH_HOLE without KEEP_SIZE with EOPNOTSUPP', async () => {
      const p = tmp('badmode.img');
      fs.writeFileSync(p, filled(8 * KiB, 1));
      const fd = fs.openSync(p, 'r+');
      try {
        await assert.rejects(addon().fallocate(fd, FALLOC.PUNCH_HOLE, 0, 4 * KiB), (e) => {
          assertErrno(e, 'fallocate', 'EOPNOTSUPP');
          const err = e as NodeJS.ErrnoException;
          assert.equal(err.errno, os.constants.errno.EOPNOTSUPP);
          assert.equal(err.message, 'fallocate: Operation not supported');
          return true;
        });
        assert.ok(readAt(fd, 0, 8 * KiB).equals(filled(8 * KiB, 1)), 'file untouched');
      } finally {
        fs.closeSync(fd);
      }
    });

    it('rejects a zero length with EINVAL and a closed fd with EBADF', async () => {
      const p = tmp('einval.img');
      const fd = fs.openSync(p, 'w+');
      try {
        await assert.rejects(addon().fallocate(fd, 0, 0, 0), (e) => assertErrno(e, 'fallocate', 'EINVAL'));
      } finally {
        fs.closeSync(fd);
      }
      await assert.rejects(addon().fallocate(BAD_FD, 0, 0, 4096), (e) => assertErrno(e, 'fallocate', 'EBADF'));
    });
  });

  describe('preadNowait', () => {
    it('reads what the page cache holds; -1 when the read would be short', () => {
      const p = tmp('nowait.img');
      fs.writeFileSync(p, Buffer.alloc(8192, 9)); // just written: in the page cache
      const fd = fs.openSync(p, 'r');
      try {
        const buf = new Uint8Array(4096);
        assert.equal(addon().preadNowait(fd, buf, 4096), 4096);
        assert.equal(buf[4095], 9);
        assert.equal(addon().preadNowait(fd, new Uint8Array(4096), 6144), -1, 'the file ends inside it');
        assert.throws(() => addon().preadNowait(fd, {} as Uint8Array, 0), (e: NodeJS.ErrnoException) => e.code === 'ERR_INVALID_ARG_TYPE');
      } finally {
        fs.closeSync(fd);
      }
    });
  });

  describe('IoQueue', () => {
    it('refuses bad arguments with Node-style errors', () => {
      const n = addon();
      assert.throws(() => new n.IoQueue(0, () => {}), (e: NodeJS.ErrnoException) => e instanceof RangeError && e.code === 'ERR_OUT_OF_RANGE');
      assert.throws(() => new n.IoQueue(1, 5 as never), (e: NodeJS.ErrnoException) => e.code === 'ERR_INVALID_ARG_TYPE');
      const q = new n.IoQueue(1, () => {});
      try {
        const one = (offset: number, buf: Uint8Array = new Uint8Array(1), count = 1): void =>
          q.submit(count, new Uint32Array(1), new Int32Array(1), new Float64Array([offset]), new Uint8Array(1), [buf]);
        assert.throws(() => one(0, {} as Uint8Array), (e: NodeJS.ErrnoException) => e.code === 'ERR_INVALID_ARG_TYPE');
        assert.throws(() => one(-1), (e: NodeJS.ErrnoException) => e instanceof RangeError && e.code === 'ERR_OUT_OF_RANGE');
        assert.throws(() => one(0.5), (e: NodeJS.ErrnoException) => e instanceof RangeError);
        assert.throws(() => one(0, undefined, 2), (e: NodeJS.ErrnoException) => e instanceof RangeError && /count/.test(e.message));
        assert.throws(
          () => q.submit(1, new Uint32Array(1), new Int32Array(1), new Float64Array(1), new Uint8Array([5]), [new Uint8Array(1)]),
          (e: NodeJS.ErrnoException) => e instanceof RangeError && /kind/.test(e.message),
        );
        // A map request's buffer holds its end and at least one run.
        assert.throws(
          () => q.submit(1, new Uint32Array(1), new Int32Array(1), new Float64Array(1), new Uint8Array([4]), [new Uint8Array(16)]),
          (e: NodeJS.ErrnoException) => e instanceof RangeError && /map buffer/.test(e.message),
        );
      } finally {
        q.close();
      }
      assert.throws(() => q.submit(0, new Uint32Array(0), new Int32Array(0), new Float64Array(0), new Uint8Array(0), []), /closed/);
    });

    it('queues closed and collected one after another never leave a cleanup hook behind', () => {
      // A closed queue used to keep its environment cleanup hook: once it was collected, a new
      // queue at the same address registered the same hook again and Node aborted the process.
      v8.setFlagsFromString('--expose-gc');
      const gc = runInNewContext('gc') as () => void;
      for (let i = 0; i < 200; i++) {
        const q = new (addon().IoQueue)(1, () => {});
        if (i % 2 === 0) q.close();
        gc();
      }
    });

    it('reports bytes moved or -errno per request id, in batches', async () => {
      const p = tmp('queue.img');
      fs.writeFileSync(p, Buffer.alloc(3000, 7));
      const fd = fs.openSync(p, 'r');
      const seen = new Map<number, number>();
      let done!: () => void;
      const all = new Promise<void>((resolve) => (done = resolve));
      const q = new (addon().IoQueue)(2, (ids, results) => {
        ids.forEach((id, i) => seen.set(id, results[i]!));
        if (seen.size === 3) done();
      });
      try {
        const bufs = [new Uint8Array(4096), new Uint8Array(10), new Uint8Array(10)];
        q.submit(3, new Uint32Array([10, 11, 12]), new Int32Array([fd, fd, BAD_FD]), new Float64Array([0, 2995, 0]), new Uint8Array(3), bufs);
        await all;
        assert.deepEqual([...seen].sort((a, b) => a[0] - b[0]), [[10, 3000], [11, 5], [12, -os.constants.errno.EBADF]]);
        assert.equal(bufs[0]![2999], 7);
      } finally {
        q.close();
        fs.closeSync(fd);
      }
    });
    for (const threads of [1, 3]) {
      it(`runs buffered writes (two at a time), O_DIRECT-kind writes and reads to the end on ${threads} thread(s)`, async () => {
        const p = tmp(`kinds-${threads}.img`);
        const blocks = 300;
        fs.writeFileSync(p, Buffer.alloc(blocks * 512));
        const fd = fs.openSync(p, 'r+');
        const results = new Map<number, number>();
        let done!: () => void;
        const all = new Promise<void>((resolve) => (done = resolve));
        const q = new (addon().IoQueue)(threads, (ids, res) => {
          ids.forEach((id, i) => results.set(id, res[i]!));
          if (results.size === 2 * blocks) done();
        });
        try {
          // Three batches: each block is written by kind 1 or 2, and a read of the block behind
          // the one written rides along, so reads queue beside held writes.
          const reads = Array.from({ length: blocks }, () => new Uint8Array(512));
          for (let batch = 0; batch < 3; batch++) {
            const ids: number[] = [], fds: number[] = [], offsets: number[] = [], kinds: number[] = [], bufs: Uint8Array[] = [];
            for (let b = batch * 100; b < (batch + 1) * 100; b++) {
              ids.push(b, blocks + b);
              fds.push(fd, fd);
              offsets.push(b * 512, ((b + blocks - 1) % blocks) * 512);
              // Kinds 1 (buffered write) and 3 (O_DIRECT write); reads alternate kinds 0 and 2.
              kinds.push(b % 3 === 0 ? 3 : 1, b % 2 === 0 ? 0 : 2);
              bufs.push(new Uint8Array(512).fill(b % 251), reads[b]!);
            }
            q.submit(ids.length, new Uint32Array(ids), new Int32Array(fds), new Float64Array(offsets), new Uint8Array(kinds), bufs);
          }
          await all;
          assert.ok([...results.values()].every((r) => r === 512));
          const image = fs.readFileSync(p);
          for (let b = 0; b < blocks; b++) assert.equal(image[b * 512 + 511], b % 251, `block ${b}`);
        } finally {
          q.close();
          fs.closeSync(fd);
        }
      });
    }
  });

  describe('fdatasync / fadvise', () => {
    it('fdatasync resolves, also when many run at once', async () => {
      const p = tmp('sync.img');
      const fd = fs.openSync(p, 'w+');
      try {
        fs.writeSync(fd, filled(64 * KiB, 3));
        assert.equal(await addon().fdatasync(fd), undefined);
        await Promise.all(Array.from({ length: 32 }, () => addon().fdatasync(fd)));
      } finally {
        fs.closeSync(fd);
      }
    });

    it('fdatasync rejects EBADF on a closed fd', async () => {
      await assert.rejects(addon().fdatasync(BAD_FD), (e) => assertErrno(e, 'fdatasync', 'EBADF'));
    });

    it('fadvise accepts every FADV value and rejects others', () => {
      const p = tmp('advise.img');
      fs.writeFileSync(p, filled(64 * KiB, 9));
      const fd = fs.openSync(p, 'r');
      try {
        for (const advice of Object.values(FADV)) {
          assert.equal(addon().fadvise(fd, 0, 0, advice), undefined);
          assert.equal(addon().fadvise(fd, 4096, 8192, advice), undefined);
        }
        assert.throws(() => addon().fadvise(fd, 0, 0, 99), (e) => assertErrno(e, 'posix_fadvise', 'EINVAL'));
        assert.throws(() => addon().fadvise(fd, 0, 0, -1), (e) => assertErrno(e, 'posix_fadvise', 'EINVAL'));
      } finally {
        fs.closeSync(fd);
      }
      assert.throws(() => addon().fadvise(BAD_FD, 0, 0, FADV.NORMAL), (e) => assertErrno(e, 'posix_fadvise', 'EBADF'));
    });
  });

  describe('OFD locks', () => {
    it('conflict between two opens of the same file and share read locks', () => {
      const n = addon();
      const p = tmp('locks.img');
      fs.writeFileSync(p, filled(4 * KiB, 0));
      const a = fs.openSync(p, 'r+');
      const b = fs.openSync(p, 'r+');
      try {
        assert.equal(n.ofdGetLock(b, 'write', 0, 100), null, 'nothing locked yet');

        assert.equal(n.ofdSetLock(a, 'write', 0, 100), true);
        assert.deepEqual(n.ofdGetLock(b, 'read', 10, 1), { type: 'write', start: 0, length: 100, pid: -1 });
        assert.equal(n.ofdSetLock(b, 'write', 50, 10), false, 'write vs write conflicts');
        assert.equal(n.ofdSetLock(b, 'read', 99, 1), false, 'read vs write conflicts');
        assert.equal(n.ofdGetLock(a, 'write', 0, 100), null, "a description never conflicts with its own locks");
        assert.equal(n.ofdSetLock(b, 'write', 100, 10), true, 'adjacent range is free');

        assert.equal(n.ofdSetLock(a, 'read', 200, 10), true);
        assert.equal(n.ofdSetLock(b, 'read', 200, 10), true, 'read locks are shared');
        assert.deepEqual(n.ofdGetLock(b, 'write', 200, 10), { type: 'read', start: 200, length: 10, pid: -1 });
        assert.equal(n.ofdGetLock(b, 'read', 200, 10), null, 'a reader may join');
        assert.equal(n.ofdSetLock(b, 'write', 205, 1), false, 'cannot upgrade while a shares');

        assert.equal(n.ofdSetLock(a, 'unlock', 0, 100), true);
        assert.equal(n.ofdGetLock(b, 'write', 0, 100), null, 'unlocked');
        assert.equal(n.ofdSetLock(b, 'write', 0, 100), true);
      } finally {
        fs.closeSync(a);
        fs.closeSync(b);
      }
    });

    it('length 0 locks to end of file, however far', () => {
      const n = addon();
      const p = tmp('eof-lock.img');
      fs.writeFileSync(p, '');
      const a = fs.openSync(p, 'r+');
      const b = fs.openSync(p, 'r+');
      try {
        assert.equal(n.ofdSetLock(a, 'write', 1000, 0), true);
        assert.equal(n.ofdGetLock(b, 'read', 999, 1), null);
        assert.deepEqual(n.ofdGetLock(b, 'read', 2 ** 40, 1), { type: 'write', start: 1000, length: 0, pid: -1 });
      } finally {
        fs.closeSync(a);
        fs.closeSync(b);
      }
    });

    it('are released when the fd is closed', async () => {
      const n = addon();
      const p = tmp('close-lock.img');
      fs.writeFileSync(p, '');
      const a = fs.openSync(p, 'r+');
      const b = fs.openSync(p, 'r+');
      try {
        assert.equal(n.ofdSetLock(a, 'write', 0, 1), true);
        assert.equal(n.ofdSetLock(b, 'write', 0, 1), false);
        fs.closeSync(a);
        assert.equal(n.ofdGetLock(b, 'write', 0, 1), null);
        assert.equal(n.ofdSetLock(b, 'write', 0, 1), true);
      } finally {
        fs.closeSync(b);
      }
      // The same through fs.promises file handles (what vdisk's file driver uses).
      const h1 = await fs.promises.open(p, 'r+');
      const h2 = await fs.promises.open(p, 'r+');
      try {
        assert.equal(n.ofdSetLock(h1.fd, 'read', 100, 1), true);
        assert.equal(n.ofdSetLock(h2.fd, 'write', 100, 1), false);
        await h1.close();
        assert.equal(n.ofdSetLock(h2.fd, 'write', 100, 1), true);
      } finally {
        await h2.close();
      }
    });

    it('reject bad lock types with TypeError and a closed fd with EBADF', () => {
      const n = addon();
      const p = tmp('badlock.img');
      fs.writeFileSync(p, '');
      const fd = fs.openSync(p, 'r+');
      try {
        assert.throws(() => n.ofdSetLock(fd, 'exclusive' as 'read', 0, 1), isTypeError);
        assert.throws(() => n.ofdSetLock(fd, 1 as unknown as 'read', 0, 1), isTypeError);
        assert.throws(() => n.ofdGetLock(fd, 'unlock' as 'read', 0, 1), isTypeError);
      } finally {
        fs.closeSync(fd);
      }
      assert.throws(() => n.ofdSetLock(BAD_FD, 'read', 0, 1), (e) => assertErrno(e, 'fcntl(F_OFD_SETLK)', 'EBADF'));
      assert.throws(() => n.ofdGetLock(BAD_FD, 'read', 0, 1), (e) => assertErrno(e, 'fcntl(F_OFD_GETLK)', 'EBADF'));
    });
  });

  describe('ficlone / ficloneRange', () => {
    // ext4 (the usual tmpdir) has no reflinks and must refuse; btrfs/XFS clone. Either way
    // the destination must end up either untouched or identical to the source.
    const REFUSALS = ['EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOTTY', 'ENOSYS'] as const;

    it('ficlone clones or refuses with an errno error, leaving dest unchanged', async () => {
      const src = tmp('clone-src.img');
      const dst = tmp('clone-dst.img');
      fs.writeFileSync(src, filled(64 * KiB, 0x11));
      fs.writeFileSync(dst, filled(16 * KiB, 0x22));
      const s = fs.openSync(src, 'r');
      const d = fs.openSync(dst, 'r+');
      try {
        let cloned = false;
        await addon()
          .ficlone(d, s)
          .then(
            () => (cloned = true),
            (e) => assertErrno(e, 'ioctl(FICLONE)', REFUSALS),
          );
        const expected = cloned ? filled(64 * KiB, 0x11) : filled(16 * KiB, 0x22);
        assert.ok(fs.readFileSync(dst).equals(expected), cloned ? 'clone has the source data' : 'dest unchanged');
      } finally {
        fs.closeSync(s);
        fs.closeSync(d);
      }
    });

    it('ficloneRange clones or refuses with an errno error, leaving dest unchanged', async () => {
      const src = tmp('clonerange-src.img');
      const dst = tmp('clonerange-dst.img');
      fs.writeFileSync(src, filled(64 * KiB, 0x33));
      fs.writeFileSync(dst, filled(64 * KiB, 0x44));
      const s = fs.openSync(src, 'r');
      const d = fs.openSync(dst, 'r+');
      try {
        let cloned = false;
        await addon()
          .ficloneRange(s, 16 * KiB, 16 * KiB, d, 32 * KiB)
          .then(
            () => (cloned = true),
            (e) => assertErrno(e, 'ioctl(FICLONERANGE)', REFUSALS),
          );
        const expected = filled(64 * KiB, 0x44);
        if (cloned) expected.fill(0x33, 32 * KiB, 48 * KiB);
        assert.ok(fs.readFileSync(dst).equals(expected));
      } finally {
        fs.closeSync(s);
        fs.closeSync(d);
      }
    });

    it('reject EBADF on closed fds', async () => {
      const src = tmp('clone-badfd.img');
      fs.writeFileSync(src, 'x');
      const s = fs.openSync(src, 'r');
      try {
        await assert.rejects(addon().ficlone(BAD_FD, s), (e) => assertErrno(e, 'ioctl(FICLONE)', 'EBADF'));
        await assert.rejects(addon().ficloneRange(s, 0, 0, BAD_FD, 0), (e) =>
          assertErrno(e, 'ioctl(FICLONERANGE)', 'EBADF'),
        );
      } finally {
        fs.closeSync(s);
      }
    });
  });

  describe('block device ioctls', () => {
    it('refuse a regular file with ENOTTY', () => {
      const p = tmp('notblk.img');
      fs.writeFileSync(p, filled(4096, 1));
      const fd = fs.openSync(p, 'r');
      try {
        assert.throws(() => addon().blockDeviceSize(fd), (e) => assertErrno(e, 'ioctl(BLKGETSIZE64)', 'ENOTTY'));
        assert.throws(() => addon().blockSectorSize(fd), (e) => assertErrno(e, 'ioctl(BLKSSZGET)', 'ENOTTY'));
      } finally {
        fs.closeSync(fd);
      }
    });

    it('match sysfs on a real block device (read-only open)', (t) => {
      const dev = findBlockDevice();
      if (!dev) {
        t.skip('no block device this user can open read-only');
        return;
      }
      try {
        assert.equal(addon().blockDeviceSize(dev.fd), dev.size, `${dev.path} size`);
        assert.equal(addon().blockSectorSize(dev.fd), dev.sector, `${dev.path} logical sector size`);
      } finally {
        fs.closeSync(dev.fd);
      }
    });
  });

  describe('isZero', () => {
    it('is true for all-zero buffers of many sizes', () => {
      for (const size of [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 4095, 4096, 4097, 65539, MiB]) {
        assert.equal(addon().isZero(new Uint8Array(size)), true, `size ${size}`);
        if (size > 0) {
          const buf = new Uint8Array(size);
          buf[size - 1] = 1;
          assert.equal(addon().isZero(buf), false, `size ${size}, last byte set`);
          buf[size - 1] = 0;
          buf[0] = 0x80;
          assert.equal(addon().isZero(buf), false, `size ${size}, first byte set`);
        }
      }
    });

    it('sees a single non-zero byte at every position of a 64-byte buffer', () => {
      for (let pos = 0; pos < 64; pos++) {
        const buf = new Uint8Array(64);
        buf[pos] = 1;
        assert.equal(addon().isZero(buf), false, `byte ${pos}`);
      }
    });

    it('sees the last byte of a 1 MiB buffer', () => {
      const buf = Buffer.alloc(MiB);
      assert.equal(addon().isZero(buf), true);
      buf[MiB - 1] = 0xff;
      assert.equal(addon().isZero(buf), false);
      buf[MiB - 1] = 0;
      buf[MiB / 2 + 1] = 1;
      assert.equal(addon().isZero(buf), false);
    });

    it('respects byteOffset and length of subarrays at odd offsets', () => {
      const backing = new Uint8Array(10_000);
      for (const off of [0, 1, 3, 5, 7, 9, 13, 4095, 4097]) {
        for (const len of [0, 1, 3, 8, 63, 64, 100, 4095, 4096, 5000]) {
          backing.fill(0);
          // Non-zero bytes right outside the view must not count.
          if (off > 0) backing[off - 1] = 1;
          if (off + len < backing.length) backing[off + len] = 1;
          const view = backing.subarray(off, off + len);
          assert.equal(addon().isZero(view), true, `off ${off} len ${len}`);
          for (const pos of new Set([0, len >> 1, len - 1].filter((p) => p >= 0 && p < len))) {
            view[pos] = 2;
            assert.equal(addon().isZero(view), false, `off ${off} len ${len} byte ${pos}`);
            view[pos] = 0;
          }
        }
      }
    });

    it('agrees with a JS scan on random single-byte buffers', () => {
      let seed = 12345;
      const rand = (m: number): number => {
        seed = (seed * 1103515245 + 12345) >>> 0;
        return seed % m;
      };
      const backing = new Uint8Array(20_000);
      for (let i = 0; i < 2000; i++) {
        backing.fill(0);
        const off = rand(1000);
        const len = rand(19_000);
        if (rand(2) && len > 0) backing[off + rand(len)] = 1 + rand(255);
        if (rand(4) === 0) backing[rand(backing.length)] = 7; // may land inside or outside
        const view = backing.subarray(off, off + len);
        assert.equal(addon().isZero(view), view.every((b) => b === 0), `case ${i}: off ${off} len ${len}`);
      }
    });

    it('accepts other views: Buffer, typed arrays, DataView', () => {
      const n = addon();
      assert.equal(n.isZero(Buffer.alloc(10)), true);
      assert.equal(n.isZero(new Float64Array(4) as unknown as Uint8Array), true);
      // -0 has its sign bit set: not zero bytes.
      assert.equal(n.isZero(new Float64Array([0, -0]) as unknown as Uint8Array), false);
      assert.equal(n.isZero(new Uint32Array([0, 0, 1 << 31]) as unknown as Uint8Array), false);
      const ab = new ArrayBuffer(32);
      new Uint8Array(ab)[3] = 1;
      assert.equal(n.isZero(new DataView(ab, 4, 28) as unknown as Uint8Array), true);
      assert.equal(n.isZero(new DataView(ab, 0, 4) as unknown as Uint8Array), false);
    });

    it('rejects non-views with TypeError', () => {
      const n = addon() as unknown as Record<string, (...args: unknown[]) => unknown>;
      for (const bad of [undefined, null, 0, 'abc', {}, [0, 0], new ArrayBuffer(8)]) {
        assert.throws(() => n.isZero!(bad), isTypeError, String(bad));
      }
      assert.throws(() => n.isZero!(), isTypeError);
    });
  });

  describe('alignedBuffer', () => {
    it('returns zero-filled buffers that O_DIRECT accepts', (t) => {
      const n = addon();
      for (const [size, align] of [
        [0, 4096],
        [1, 1],
        [100, 512],
        [4096, 4096],
        [3 * 4096, 4096],
        [MiB, 65536],
      ] as const) {
        const buf = n.alignedBuffer(size, align);
        assert.ok(buf instanceof Uint8Array);
        assert.equal(buf.byteLength, size);
        assert.equal(n.isZero(buf), true);
      }
      const p = tmp('direct.img');
      let fd: number;
      try {
        fd = fs.openSync(p, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_DIRECT);
      } catch (err) {
        t.skip(`O_DIRECT not available in ${os.tmpdir()}: ${(err as Error).message}`);
        return;
      }
      try {
        for (let i = 0; i < 64; i++) {
          const buf = n.alignedBuffer(4096 * (1 + (i % 4)), 4096);
          buf.fill(i + 1);
          assert.equal(fs.writeSync(fd, buf, 0, buf.length, 4096 * i), buf.length);
          const back = n.alignedBuffer(buf.length, 4096);
          assert.equal(fs.readSync(fd, back, 0, back.length, 4096 * i), back.length);
          assert.ok(Buffer.from(back).equals(Buffer.from(buf)));
        }
      } finally {
        fs.closeSync(fd);
      }
    });

    it('rejects bad alignments with TypeError and impossible sizes with RangeError', () => {
      const n = addon();
      for (const align of [0, 3, 4097, 2 * MiB]) assert.throws(() => n.alignedBuffer(16, align), isTypeError, `align ${align}`);
      assert.throws(() => n.alignedBuffer(2 ** 53 - 1, 4096), isRangeError);
      assert.throws(() => n.alignedBuffer(-1, 4096), isRangeError);
    });
  });

  describe('argument validation', () => {
    it('throws TypeError for wrong types and RangeError for unusable numbers, never crashes', () => {
      const n = addon() as unknown as Record<string, (...args: unknown[]) => unknown>;
      const p = tmp('args.img');
      fs.writeFileSync(p, filled(4096, 1));
      const fd = fs.openSync(p, 'r+');
      try {
        const good: Record<string, unknown[]> = {
          seekData: [fd, 0],
          seekHole: [fd, 0],
          fallocate: [fd, 0, 0, 4096],
          fadvise: [fd, 0, 0, 0],
          ficlone: [fd, fd],
          ficloneRange: [fd, 0, 0, fd, 0],
          fdatasync: [fd],
          ofdSetLock: [fd, 'read', 0, 1],
          ofdGetLock: [fd, 'read', 0, 1],
          blockDeviceSize: [fd],
          blockSectorSize: [fd],
          alignedBuffer: [16, 16],
        };
        for (const [name, args] of Object.entries(good)) {
          const fn = n[name]!;
          assert.throws(() => fn(), isTypeError, `${name}()`);
          for (let i = 0; i < args.length; i++) {
            if (typeof args[i] !== 'number') continue;
            const call = (v: unknown): unknown => fn(...args.map((a, j) => (j === i ? v : a)));
            for (const bad of ['1', undefined, null, {}, 1n, true]) {
              assert.throws(() => call(bad), isTypeError, `${name} arg ${i} = ${String(bad)}`);
            }
            // fallocate's mode and fadvise's advice are int32 flag words; the rest are fds,
            // offsets and lengths, which must be non-negative safe integers.
            const int32 = (name === 'fallocate' && i === 1) || (name === 'fadvise' && i === 3);
            const badNumbers = int32 ? [NaN, Infinity, 1.5, 2 ** 31, -(2 ** 31) - 1] : [NaN, Infinity, -Infinity, 1.5, -1, 2 ** 53];
            for (const bad of badNumbers) {
              assert.throws(() => call(bad), isRangeError, `${name} arg ${i} = ${bad}`);
            }
          }
        }
      } finally {
        fs.closeSync(fd);
      }
    });
  });
});

describe('native loader', () => {
  it('exports the Linux FALLOC and FADV values whether or not the addon loaded', () => {
    assert.deepEqual(
      { ...FALLOC },
      { KEEP_SIZE: 1, PUNCH_HOLE: 2, ZERO_RANGE: 0x10, COLLAPSE_RANGE: 8, INSERT_RANGE: 0x20 },
    );
    assert.deepEqual({ ...FADV }, { NORMAL: 0, RANDOM: 1, SEQUENTIAL: 2, WILLNEED: 3, DONTNEED: 4, NOREUSE: 5 });
    assert.equal(nativeStatus.loaded, native !== null);
    if (!native) assert.equal(typeof nativeStatus.reason, 'string');
  });

  it('refuses a build whose functions are all there but whose interface version is older (a stale build)', (t) => {
    if (!native) return t.skip('native addon not built');
    assert.equal(validateAddon(native).status.loaded, true);
    const stale = validateAddon({ ...native, abi: 1 });
    assert.equal(stale.addon, null);
    assert.match(stale.status.reason ?? '', /out of date \(interface 1, want \d+\)/);
    const { abi: _abi, ...noAbi } = native as unknown as Record<string, unknown>;
    assert.match(validateAddon(noAbi).status.reason ?? '', /interface 1/);
    const { IoQueue: _q, ...missing } = native as unknown as Record<string, unknown>;
    assert.match(validateAddon(missing).status.reason ?? '', /missing IoQueue/);
  });

  it('VDISK_NO_NATIVE=1 forces native = null with a reason', () => {
    const script =
      `const m = await import(${JSON.stringify(pathToFileURL(LOADER).href)});` +
      `console.log(JSON.stringify({ isNull: m.native === null, status: m.nativeStatus, falloc: m.FALLOC }));`;
    const res = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: ROOT,
      env: { ...process.env, VDISK_NO_NATIVE: '1' },
      encoding: 'utf8',
    });
    assert.equal(res.status, 0, `child failed: ${res.stderr}`);
    const out = JSON.parse(res.stdout.trim().split('\n').pop()!) as {
      isNull: boolean;
      status: { loaded: boolean; reason?: string };
      falloc: typeof FALLOC;
    };
    assert.equal(out.isNull, true);
    assert.equal(out.status.loaded, false);
    assert.match(out.status.reason ?? '', /VDISK_NO_NATIVE/);
    assert.equal(out.falloc.PUNCH_HOLE, 2);
  });
});

/** A block device we may open read-only, with its size and sector size from sysfs. */
function findBlockDevice(): { path: string; fd: number; size: number; sector: number } | null {
  let names: string[];
  try {
    names = fs.readdirSync('/sys/block');
  } catch {
    return null;
  }
  // Prefer devices with media; an unbound loop device reports 0, which tests less.
  const candidates = names
    .map((name) => {
      try {
        const size = Number(fs.readFileSync(`/sys/block/${name}/size`, 'utf8').trim()) * 512;
        const sector = Number(fs.readFileSync(`/sys/block/${name}/queue/logical_block_size`, 'utf8').trim());
        return { name, size, sector };
      } catch {
        return null;
      }
    })
    .filter((c): c is { name: string; size: number; sector: number } => c !== null)
    .sort((x, y) => Number(y.size > 0) - Number(x.size > 0));
  for (const c of candidates) {
    const devPath = `/dev/${c.name}`;
    try {
      if (!fs.statSync(devPath).isBlockDevice()) continue;
      const fd = fs.openSync(devPath, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      return { path: devPath, fd, size: c.size, sector: c.sector };
    } catch {
      // not permitted or gone: try the next
    }
  }
  return null;
}
