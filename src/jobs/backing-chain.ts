import { realpath } from 'node:fs/promises';
import path from 'node:path';
import type { BlockNode } from '../core/block-node.js';
import { combinePath } from '../registry/registry.js';

/** An image and its backing files, top first: the layers a commit or stream works across. */
export function backingChain(top: BlockNode): BlockNode[] {
  const chain: BlockNode[] = [];
  for (let node: BlockNode | undefined = top; node; node = node.backing) chain.push(node);
  return chain;
}

/** The backing file name as the image's header stores it (qemu-img info's `backing-filename`). */
export function storedBackingName(node: BlockNode): string | undefined {
  const name = node.imageInfo()['backing-filename'];
  return typeof name === 'string' ? name : undefined;
}

/**
 * Where `name` sits in the backing chain of `top` (index ≥ 1 into backingChain(top)), as QEMU's
 * bdrv_find_backing_image finds it: a name that matches the one an image stores for its backing
 * file, or, for local paths, one that resolves (relative to that image's directory, not the
 * current one) to the same file. The top image itself is never a match.
 */
export async function findBackingImage(top: BlockNode, name: string): Promise<number | undefined> {
  const chain = backingChain(top);
  for (let i = 0; i + 1 < chain.length; i++) {
    const above = chain[i]!;
    const below = chain[i + 1]!;
    const stored = storedBackingName(above);
    if (name === stored || name === below.filename) return i + 1;
    if (isUri(name) || isUri(below.filename)) continue;
    const wanted = await canonical(combinePath(above.filename, name));
    if (wanted !== undefined && wanted === (await canonical(below.filename))) return i + 1;
  }
  return undefined;
}

/** A filename that names a protocol (nbd://…, json:…) rather than a local path. */
function isUri(name: string): boolean {
  return /^[a-z][a-z0-9+.-]*:/i.test(name);
}

async function canonical(file: string): Promise<string | undefined> {
  try {
    return await realpath(file);
  } catch {
    return undefined;
  }
}

/**
 * The name a new backing link from `top` to `base` should store: the name by which the image
 * just above the base found it when that image sits beside the top (or the name is absolute),
 * else the base's path relative to the top's directory, since names resolve from there.
 */
export function linkName(top: BlockNode, aboveBase: BlockNode, base: BlockNode): string {
  const stored = storedBackingName(aboveBase);
  if (stored !== undefined && (path.isAbsolute(stored) || isUri(stored) || path.dirname(aboveBase.filename) === path.dirname(top.filename))) return stored;
  if (isUri(base.filename)) return base.filename;
  return path.relative(path.dirname(top.filename), base.filename);
}
