import { setTimeout as delay } from 'node:timers/promises';
import { FAILED, imageOf, OK, type CommandDef, type Context, type Status } from '../command.js';
import { strtol } from '../numbers.js';

export const flushCommand: CommandDef = {
  name: 'flush',
  altname: 'f',
  argmin: 0,
  argmax: 0,
  oneline: 'flush all in-core file state to disk',
  async run(ctx: Context): Promise<Status> {
    // qemu-io prints nothing for a failed flush; only the exit status tells.
    try {
      await imageOf(ctx).flush();
      return OK;
    } catch {
      return FAILED;
    }
  },
};

/** Requests complete before the next command starts, so there is never anything to wait for. */
export const aioFlushCommand: CommandDef = {
  name: 'aio_flush',
  argmin: 0,
  argmax: 0,
  oneline: 'completes all outstanding aio requests',
  async run(): Promise<Status> {
    return OK;
  },
};

/** Beyond this many milliseconds qemu's timer deadline overflows and the sleep ends at once. */
const SLEEP_OVERFLOW_MS = 9_223_372_036n;
const MAX_TIMER_MS = 2 ** 31 - 1;

export const sleepCommand: CommandDef = {
  name: 'sleep',
  argmin: 1,
  argmax: 1,
  noFile: true,
  oneline: 'waits for the given value in milliseconds',
  async run(ctx: Context, argv: string[]): Promise<Status> {
    const { value, complete } = strtol(argv[1]!);
    if (value < 0n || !complete) {
      ctx.print(`${argv[1]} is not a valid number\n`);
      return FAILED;
    }
    if (value >= SLEEP_OVERFLOW_MS) return OK;
    for (let left = Number(value); left > 0; left -= MAX_TIMER_MS) await delay(Math.min(left, MAX_TIMER_MS));
    return OK;
  },
};

export const quitCommand: CommandDef = {
  name: 'quit',
  altname: 'q',
  argmin: -1,
  argmax: -1,
  noFile: true,
  oneline: 'exit the program',
  async run(ctx: Context): Promise<Status> {
    ctx.quit = true;
    return OK;
  },
};
