import { jobInfo } from '../jobs/job-info.js';
import type { Job } from '../jobs/job.js';
import { hasFlag, lastValue, parseArgs, type OptionSpec, type Parsed } from './args.js';
import type { CliIo } from './context.js';
import { UsageError } from './errors.js';
import { IMAGE_OPTIONS, outputFormat } from './open-image.js';
import { qemuStrtosz } from './sizes.js';

export interface JobReport {
  /** QMP's job type for --output=json (commit, stream …). */
  type: string;
  output: 'human' | 'json';
  quiet: boolean;
  /** Human progress, 0–100, as the job moves (the -p renderer); absent without -p. */
  progress?: ((percent: number) => void) | undefined;
}

/**
 * Runs a job in the foreground of a command: its progress rendered as asked, and Ctrl-C (or
 * SIGTERM) cancelling it between requests, so that every image it writes is left consistent
 * and closed by the caller rather than killed mid-request.
 */
export async function runCliJob<T>(job: Job<T>, io: CliIo, report: JobReport): Promise<T> {
  const reporting = report.output === 'json' ? reportJson(job, io, report) : reportHuman(job, report.progress);
  const interrupt = (signal: NodeJS.Signals) => job.cancel(new Error(`interrupted by ${signal}`));
  process.once('SIGINT', interrupt).once('SIGTERM', interrupt);
  try {
    return await job.start();
  } finally {
    process.off('SIGINT', interrupt).off('SIGTERM', interrupt);
    // The job has concluded, so its events have ended: the last line is out before we return.
    await reporting;
  }
}

async function reportHuman(job: Job<unknown>, progress: JobReport['progress']): Promise<void> {
  if (!progress) return;
  for await (const e of job.events()) if (e.type === 'progress' && e.total > 0) progress((100 * e.done) / e.total);
}

/**
 * --output=json: the job as QMP's query-jobs shows it, one line when it starts running, one
 * whenever another whole percent is done (not with -q), and one when it concludes, with the
 * error if it failed.
 */
async function reportJson(job: Job<unknown>, io: CliIo, report: JobReport): Promise<void> {
  // A progress line shows the figures of its own event: the job may have moved on since.
  const line = (progress?: { done: number; total: number }) => {
    const info = jobInfo(job, report.type);
    if (progress) [info['current-progress'], info['total-progress']] = [progress.done, progress.total];
    io.stdout.write(JSON.stringify(info) + '\n');
  };
  let percent = 0;
  for await (const e of job.events()) {
    if (e.type === 'state' && (!report.quiet || e.state === 'concluded')) line();
    if (e.type === 'progress' && !report.quiet && e.total > 0 && Math.floor((100 * e.done) / e.total) > percent) {
      percent = Math.floor((100 * e.done) / e.total);
      line(e);
    }
  }
}

/** A job's -r RATE: qemu-img's cvtnum("rate limit"), bytes per second (0: no limit), in one line. */
export function parseRate(text: string | undefined): number {
  if (text === undefined) return 0;
  const r = qemuStrtosz(text);
  if (!r.ok && r.error === 'EINVAL') {
    throw new UsageError('Invalid rate limit specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
  }
  if (!r.ok || r.value > BigInt(Number.MAX_SAFE_INTEGER)) throw new UsageError('Invalid rate limit specified. Must be between 0 and 9223372036854775807.');
  return Number(r.value);
}

/** What every job command takes: IMAGE, how to open it, -p, -q, -r RATE and --output. */
export interface JobArgs {
  parsed: Parsed;
  image: string;
  rateLimit: number;
  output: 'human' | 'json';
  quiet: boolean;
  /** -p without -q, for human output. */
  progress: boolean;
}

/** Parses a job command's arguments: the common ones plus `extra`; 'help' for -h. */
export function parseJobArgs(argv: readonly string[], extra: readonly OptionSpec[], command: string): JobArgs | 'help' {
  const p = parseArgs(argv, [
    ...IMAGE_OPTIONS, ...extra, { short: 'p' }, { short: 'q' }, { short: 'r', value: true },
    { long: 'output', value: true }, { short: 'h', long: 'help' },
  ], command);
  if (hasFlag(p, 'help')) return 'help';
  const rateLimit = parseRate(lastValue(p, 'r'));
  const output = outputFormat(p);
  const quiet = hasFlag(p, 'q');
  if (p.positionals.length !== 1) throw new UsageError('Expecting one image file name');
  return { parsed: p, image: p.positionals[0]!, rateLimit, output, quiet, progress: hasFlag(p, 'p') && !quiet && output === 'human' };
}
