import { realpath } from 'node:fs/promises';
import path from 'node:path';
import { BlockError } from '../core/errors.js';

/**
 * Who may be opened when an image names another file. An image is data, often from a guest or a
 * download, so following its references is a decision: 'permissive' follows any path (QEMU's
 * behaviour), 'deny' follows none, 'allow' only paths inside the listed directories.
 */
export type OpenGate = { mode: 'permissive' } | { mode: 'deny' } | { mode: 'allow'; dirs: readonly string[] };

export const DEFAULT_MAX_CHAIN_DEPTH = 64;

/** `uri`: the target is a protocol's URI (nbd://, http://), a place on the network, not a path. */
export async function checkGate(gate: OpenGate, target: string, namedBy: string, uri = false): Promise<void> {
  if (gate.mode === 'permissive') return;
  const ctx = { op: 'open', path: target };
  if (gate.mode === 'deny') {
    throw new BlockError('EPERM', `'${namedBy}' refers to '${target}', and following image references is denied`, ctx);
  }
  // No directory holds a network location (read as a path, 'nbd://h/x' would be cwd/nbd:/h/x).
  if (uri) throw new BlockError('EPERM', `'${namedBy}' refers to '${target}', a network location outside the allowed directories`, ctx);
  // Resolve links first, so a symlink inside an allowed directory cannot lead outside it.
  const real = await realpath(target).catch(() => path.resolve(target));
  for (const dir of gate.dirs) {
    const root = await realpath(dir).catch(() => path.resolve(dir));
    const rel = path.relative(root, real);
    // Outside means `..` as the first path component, not any name that starts with two dots.
    if (rel === '' || (rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel))) return;
  }
  throw new BlockError('EPERM', `'${namedBy}' refers to '${target}', which is outside the allowed directories`, ctx);
}
