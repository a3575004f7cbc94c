import type { CommandDef } from '../command.js';
import { allocCommand, mapCommand } from './allocation.js';
import { discardCommand } from './discard.js';
import { helpCommand } from './help.js';
import { infoCommand, lengthCommand } from './info.js';
import { aioFlushCommand, flushCommand, quitCommand, sleepCommand } from './misc.js';
import { readCommand } from './read.js';
import { truncateCommand } from './truncate.js';
import { writeCommand } from './write.js';

/**
 * The qemu-io commands vdisk implements. Not here: readv/writev, aio_read/aio_write, open,
 * close, reopen, the blkdebug breakpoint commands, abort and sigraise.
 */
export const COMMANDS: readonly CommandDef[] = [
  aioFlushCommand, allocCommand, discardCommand, flushCommand, helpCommand, infoCommand, lengthCommand,
  mapCommand, quitCommand, readCommand, sleepCommand, truncateCommand, writeCommand,
];

/** By name or one-letter alias, exactly as typed. */
export function findCommand(name: string): CommandDef | undefined {
  return COMMANDS.find((c) => c.name === name || c.altname === name);
}
