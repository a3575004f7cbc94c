import type { BlockNode } from '../../../../src/core/block-node.js';
import type { Context } from '../../../../src/cli/io/command.js';
import { COMMANDS } from '../../../../src/cli/io/commands/index.js';

/** A command Context that records what would go to stdout and stderr. */
export function fakeContext(node: BlockNode | null = null): Context & { stdout(): string; stderr(): string } {
  let out = '';
  let err = '';
  return {
    node,
    discardMode: 'unmap',
    commands: COMMANDS,
    quit: false,
    print: (t) => void (out += t),
    printErr: (t) => void (err += t),
    errorReport: (m) => void (err += `vdisk io: ${m}\n`),
    warnReport: (m) => void (err += `vdisk io: warning: ${m}\n`),
    stdout: () => out,
    stderr: () => err,
  };
}
