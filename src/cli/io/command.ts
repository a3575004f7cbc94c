import type { BlockNode } from '../../core/block-node.js';

/** A command's outcome; any FAILED makes `vdisk io` exit 1 (qemu-io's last_error). */
export const OK = 0;
export const FAILED = 1;
export type Status = typeof OK | typeof FAILED;

/** What a command sees: the image and qemu-io's output channels. */
export interface Context {
  /** The open image; null only for commands that may run without one (help, sleep, quit). */
  readonly node: BlockNode | null;
  /** qemu-io's discard mode: 'ignore' makes discard a successful no-op (write -z -u still unmaps). */
  readonly discardMode: 'unmap' | 'ignore';
  /** Every command in the table, for help. */
  readonly commands: readonly CommandDef[];
  /** printf() to stdout: qemu-io prints results and most per-command errors there. */
  print(text: string): void;
  /** fprintf(stderr) with no prefix (getopt, argument counts, perror). */
  printErr(text: string): void;
  /** error_report(): "vdisk io: MESSAGE" on stderr. */
  errorReport(message: string): void;
  /** warn_report(): "vdisk io: warning: MESSAGE" on stderr. */
  warnReport(message: string): void;
  /** Set by quit: no further command runs. */
  quit: boolean;
}

/** One entry of the command table, shaped like qemu-io's cmdinfo_t. */
export interface CommandDef {
  readonly name: string;
  readonly altname?: string;
  /** Operand count limits; -1 for argmax means no limit, argmin -1 means no check at all. */
  readonly argmin: number;
  readonly argmax: number;
  /** The synopsis after the name in help and usage lines (undefined prints nothing). */
  readonly args?: string;
  readonly oneline: string;
  /** Extended help printed by `help NAME`, starting and ending with an empty line. */
  readonly help?: string;
  /** Runs with no image open (qemu's CMD_FLAG_GLOBAL / CMD_NOFILE_OK). */
  readonly noFile?: boolean;
  /** Needs a writable image: refused up front on a read-only open, as qemu's permission check does. */
  readonly writes?: boolean;
  run(ctx: Context, argv: string[]): Promise<Status>;
}

/** The node of a command that requires one (the session checks before calling). */
export function imageOf(ctx: Context): BlockNode {
  if (!ctx.node) throw new Error('command needs an open image');
  return ctx.node;
}

/** qemuio_command_usage(): the synopsis on stdout; the command fails. */
export function usage(ctx: Context, def: CommandDef): Status {
  ctx.print(`${def.name} ${def.args ?? '(null)'} -- ${def.oneline}\n`);
  return FAILED;
}
