import readline from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';

export const PROMPT = 'vdisk io> ';

/**
 * Command lines typed or piped on stdin. On a terminal: readline with a prompt and line
 * editing. Otherwise no prompt, and lines end at '\n' only (a '\r' stays part of the command,
 * as with qemu-io's fgets); a last line without a newline still counts.
 */
export async function* commandLines(stdin: Readable, stdout: Writable): AsyncGenerator<string> {
  if ((stdin as Readable & { isTTY?: boolean }).isTTY) {
    const rl = readline.createInterface({ input: stdin, output: stdout, terminal: true, prompt: PROMPT });
    // ^C at the prompt ends the session like quit, so the image is still flushed and closed.
    rl.on('SIGINT', () => rl.close());
    try {
      rl.prompt();
      for await (const line of rl) {
        yield line;
        rl.prompt();
      }
      // ^D at the prompt: end the prompt line as a shell does.
      stdout.write('\n');
    } finally {
      rl.close();
    }
    return;
  }
  const decoder = new StringDecoder('utf8');
  let pending = '';
  for await (const chunk of stdin) {
    pending += typeof chunk === 'string' ? chunk : decoder.write(chunk as Buffer);
    for (let nl = pending.indexOf('\n'); nl !== -1; nl = pending.indexOf('\n')) {
      yield pending.slice(0, nl);
      pending = pending.slice(nl + 1);
    }
  }
  pending += decoder.end();
  if (pending !== '') yield pending;
}
