import { read, write } from 'node:fs';
import { queuedIo, queuedRead, queuedWrite } from './io-queue.js';

/*
 * Positional reads and writes on a descriptor. With the native addon they go through its I/O
 * queue (io-queue.ts); without it, through fs's callback API: FileHandle's promise API costs
 * about two and a half times as much per 4 KiB request (measured). Short transfers continue
 * until done (or EOF for reads).
 */

/**
 * Reads into `buf` from `position` until it is full or the file ends; returns the bytes read.
 * `direct`: `fd` is O_DIRECT (the queue then never tries the read on the event loop's thread).
 * `timeoutMs`: fail with ETIMEDOUT when the read has not returned after this long, leaving the
 * system call behind (0: wait as long as the kernel does; without the addon there is no deadline).
 */
export const preadFull: (fd: number, buf: Uint8Array, position: number, direct?: boolean, timeoutMs?: number) => Promise<number> =
  queuedIo ? queuedRead : fsReadFull;

/** Writes all of `buf` at `position`. `direct` and `timeoutMs` as for preadFull. */
export const pwriteFull: (fd: number, buf: Uint8Array, position: number, direct?: boolean, timeoutMs?: number) => Promise<void> =
  queuedIo ? queuedWrite : fsWriteFull;

function fsReadFull(fd: number, buf: Uint8Array, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      read(fd, buf, done, buf.byteLength - done, position + done, (err, n) => {
        if (err) return reject(err);
        done += n;
        if (n === 0 || done === buf.byteLength) resolve(done);
        else step();
      });
    };
    step();
  });
}

function fsWriteFull(fd: number, buf: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      write(fd, buf, done, buf.byteLength - done, position + done, (err, n) => {
        if (err) return reject(err);
        done += n;
        if (done === buf.byteLength) resolve();
        else step();
      });
    };
    step();
  });
}
