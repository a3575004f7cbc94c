import type { Writable } from 'node:stream';
import type { BlockNode } from '../../core/block-node.js';
import { describeError } from '../main.js';
import { breakline } from './breakline.js';
import { FAILED, OK, type CommandDef, type Context, type Status } from './command.js';
import { COMMANDS, findCommand } from './commands/index.js';

export interface SessionOptions {
  node: BlockNode | null;
  discardMode: 'unmap' | 'ignore';
  stdout: Writable;
  stderr: Writable;
  /** Prefix of error_report() lines ("vdisk io"). */
  progName: string;
}

/**
 * One image and the commands run against it, as qemu-io's command loop: each line is split,
 * looked up, checked for an image, its operand count and write permission, then run. A failure
 * of any command makes the exit status 1; later commands still run.
 */
export class Session implements Context {
  readonly node: BlockNode | null;
  readonly discardMode: 'unmap' | 'ignore';
  readonly commands: readonly CommandDef[] = COMMANDS;
  quit = false;
  /** Set once any command has failed. */
  failed = false;
  private readonly stdout: Writable;
  private readonly stderr: Writable;
  private readonly progName: string;

  constructor(opts: SessionOptions) {
    this.node = opts.node;
    this.discardMode = opts.discardMode;
    this.stdout = opts.stdout;
    this.stderr = opts.stderr;
    this.progName = opts.progName;
  }

  print(text: string): void {
    this.stdout.write(text);
  }

  printErr(text: string): void {
    this.stderr.write(text);
  }

  errorReport(message: string): void {
    this.stderr.write(`${this.progName}: ${message}\n`);
  }

  warnReport(message: string): void {
    this.stderr.write(`${this.progName}: warning: ${message}\n`);
  }

  /** Runs one command line; returns its status (an empty line is OK). */
  async runLine(line: string): Promise<Status> {
    const argv = breakline(line);
    if (argv.length === 0) return OK;
    const status = await this.dispatch(argv);
    if (status !== OK) this.failed = true;
    return status;
  }

  private async dispatch(argv: string[]): Promise<Status> {
    const def = findCommand(argv[0]!);
    if (!def) {
      this.printErr(`command "${argv[0]}" not found\n`);
      return FAILED;
    }
    if (!def.noFile && !this.node) {
      this.printErr("no file open, try 'help open'\n");
      return FAILED;
    }
    const count = argv.length - 1;
    if (count < def.argmin || (def.argmax !== -1 && count > def.argmax)) {
      this.printErr(`bad argument count ${count} to ${argv[0]}, ${expected(def)}\n`);
      return FAILED;
    }
    if (def.writes && !this.node!.caps.writable) {
      this.errorReport('Block node is read-only');
      return FAILED;
    }
    try {
      return await def.run(this, argv);
    } catch (err) {
      // Commands report expected failures themselves; anything else is one line and the
      // session goes on, as a script of commands expects.
      this.errorReport(describeError(err));
      if (process.env.VDISK_DEBUG && err instanceof Error && err.stack) this.printErr(`${err.stack}\n`);
      return FAILED;
    }
  }
}

function expected(def: CommandDef): string {
  if (def.argmax === -1) return `expected at least ${def.argmin} arguments`;
  if (def.argmin === def.argmax) return `expected ${def.argmin} arguments`;
  return `expected between ${def.argmin} and ${def.argmax} arguments`;
}
