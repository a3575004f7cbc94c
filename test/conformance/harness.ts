/**
 * Shared plumbing for the conformance suite: an image on a stack together with a byte model of
 * what it must contain.
 */
import assert from 'node:assert/strict';
import { BlockError, type BlockErrorCode } from '../../src/core/errors.js';
import type { BlockNode } from '../../src/core/block-node.js';
import type { WriteOptions, ZeroOptions } from '../../src/core/types.js';
import { assertBytesEqual, pattern } from '../helpers/bytes.js';
import type { Stack, StackInstance } from '../helpers/stacks.js';

export const SIZE = 64 * 1024;

export class Image {
  /** What the device must read back (all zeros for a stack that drops writes). */
  readonly model: Uint8Array;
  private seed = 1;

  constructor(readonly stack: Stack, readonly inst: StackInstance) {
    this.model = new Uint8Array(inst.node.size);
  }

  get node(): BlockNode {
    return this.inst.node;
  }

  get persistent(): boolean {
    return this.stack.features.persistent;
  }

  /** Fresh non-zero bytes. */
  bytes(length: number): Uint8Array {
    return pattern(length, this.seed++ * 7919);
  }

  async write(offset: number, data: Uint8Array, opts?: WriteOptions): Promise<void> {
    await this.node.write(offset, data, opts);
    if (this.persistent) this.model.set(data, offset);
  }

  /** Overwrites [offset, offset+length) with fresh bytes. */
  async fill(offset = 0, length = this.model.byteLength - offset): Promise<void> {
    await this.write(offset, this.bytes(length));
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    await this.node.writeZeroes(offset, length, opts);
    this.model.fill(0, offset, offset + length);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const buf = new Uint8Array(length);
    await this.node.read(offset, buf);
    return buf;
  }

  /** The device's [offset, offset+length) equals the model. */
  async expectRange(offset: number, length: number, what = 'read'): Promise<void> {
    const got = await this.read(offset, length);
    assertBytesEqual(got, this.model.subarray(offset, offset + length), `${this.stack.name}: ${what} [${offset}, +${length})`, offset);
  }

  /** The whole device equals the model. */
  async expectAll(what = 'device contents'): Promise<void> {
    await this.expectRange(0, this.model.byteLength, what);
  }
}

/** Runs `fn` on a fresh image filled with known bytes, then disposes it (checking sentinels). */
export async function withImage(stack: Stack, size: number, fn: (img: Image) => Promise<void>, fill = true): Promise<void> {
  const inst = await stack.create(size);
  try {
    const img = new Image(stack, inst);
    if (fill) await img.fill();
    await fn(img);
  } finally {
    await inst.dispose();
  }
}

/** Asserts that `p` rejects with a BlockError carrying `code`. */
export async function rejectsWith(p: Promise<unknown> | (() => Promise<unknown>), code: BlockErrorCode, what: string): Promise<void> {
  const promise = typeof p === 'function' ? Promise.resolve().then(p) : p;
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof BlockError, `${what}: expected a BlockError, got ${String(err)}`);
    assert.equal(err.code, code, `${what}: code ${err.code} (${err.message}), expected ${code}`);
    return true;
  }, what);
}

/** Reads every extent of [offset, offset+length) into an array. */
export async function collectExtents(node: BlockNode, offset: number, length: number) {
  const out = [];
  for await (const e of node.extents(offset, length)) out.push(e);
  return out;
}

export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

export function alignDown(n: number, a: number): number {
  return Math.floor(n / a) * a;
}
