import { main } from './main.js';

/**
 * The process entry point (bin/vdisk.js, and dev.ts from source): runs one command line and sets
 * the exit status. Node ignores SIGPIPE and reports a reader that went away (`vdisk map … | head`)
 * as an EPIPE error on the stream, which would end the process with a stack trace; vdisk ends
 * quietly instead, with the status a shell reports for qemu-img killed by SIGPIPE (128 + 13).
 */
export async function runProcess(): Promise<void> {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(141);
      throw err;
    });
  }
  process.exitCode = await main(process.argv.slice(2));
}
