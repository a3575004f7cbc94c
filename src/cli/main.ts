import { BlockError } from '../core/errors.js';
import type { CliIo, Command } from './context.js';
import { UsageError } from './errors.js';

/** Subcommands load lazily: `vdisk info` should not pay for the NBD server's imports. */
const COMMANDS: Record<string, { summary: string; load: () => Promise<Command> }> = {
  amend: { summary: 'change format options of an image (qemu-img amend)', load: async () => (await import('./amend.js')).amend },
  bench: { summary: 'run a simple image benchmark (qemu-img bench)', load: async () => (await import('./bench.js')).bench },
  check: { summary: 'check an image for consistency (qemu-img check)', load: async () => (await import('./check.js')).check },
  commit: { summary: 'write an image\'s data into its backing file (qemu-img commit)', load: async () => (await import('./commit.js')).commit },
  compare: { summary: 'compare the contents of two images (qemu-img compare)', load: async () => (await import('./compare.js')).compare },
  convert: { summary: 'copy images into a new or existing image (qemu-img convert)', load: async () => (await import('./convert.js')).convert },
  create: { summary: 'create a new image (qemu-img create)', load: async () => (await import('./create.js')).create },
  dd: { summary: 'copy part of an image into a new image (qemu-img dd)', load: async () => (await import('./dd.js')).dd },
  info: { summary: 'show facts about an image (qemu-img info)', load: async () => (await import('./info.js')).info },
  io: { summary: 'run qemu-io commands on an image (qemu-io)', load: async () => (await import('./io/index.js')).io },
  map: { summary: 'show where the image data lives (qemu-img map)', load: async () => (await import('./map.js')).map },
  measure: { summary: 'show the size a new image would need (qemu-img measure)', load: async () => (await import('./measure.js')).measure },
  rebase: { summary: 'change the backing file of an image (qemu-img rebase)', load: async () => (await import('./rebase.js')).rebase },
  resize: { summary: 'change the virtual size of an image (qemu-img resize)', load: async () => (await import('./resize.js')).resize },
  serve: { summary: 'export images over NBD (qemu-nbd)', load: async () => (await import('./serve.js')).serve },
  stream: { summary: 'copy the backing files\' data into an image and drop the link (block-stream)', load: async () => (await import('./stream.js')).stream },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return [
    'usage: vdisk COMMAND [OPTIONS] ...',
    '',
    'vdisk is a virtual-disk I/O stack: raw and qcow2 images and an NBD server; VMDK to come.',
    'Commands take the options of the qemu-img, qemu-io or qemu-nbd command they are shaped like.',
    '',
    'Commands:',
    ...lines,
    '',
    "Run 'vdisk COMMAND --help' for a command's options.",
  ].join('\n');
}

/** Runs one vdisk command line and returns the exit status. Bad input is one line on stderr. */
export async function main(argv: string[], io: CliIo = { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.stdout.write(usage() + '\n');
    return name === undefined ? 1 : 0;
  }
  if (name === '--version' || name === '-V') {
    io.stdout.write('vdisk version 0.1.0\n');
    return 0;
  }
  const entry = COMMANDS[name];
  if (!entry) {
    io.stderr.write(`vdisk: unknown command '${name}'; try 'vdisk --help'\n`);
    return 1;
  }
  try {
    return await (await entry.load())(rest, io);
  } catch (err) {
    io.stderr.write(`vdisk ${name}: ${describeError(err)}\n`);
    if (process.env.VDISK_DEBUG && err instanceof Error && err.stack) io.stderr.write(err.stack + '\n');
    return 1;
  }
}

/** One line for a user: the message for expected failures, a pointer to a stack for bugs. */
export function describeError(err: unknown): string {
  if (err instanceof BlockError || err instanceof UsageError) return err.message;
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code ? `${err.message}` : `internal error: ${err.message} (set VDISK_DEBUG=1 for a stack trace)`;
  }
  return String(err);
}
