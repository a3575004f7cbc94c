import type { Readable, Writable } from 'node:stream';

/** Streams a command talks through, so commands run the same in a process and in tests. */
export interface CliIo {
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
}

export type Command = (argv: string[], io: CliIo) => Promise<number>;

export function print(io: CliIo, text: string): void {
  io.stdout.write(text.endsWith('\n') ? text : text + '\n');
}
