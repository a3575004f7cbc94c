/**
 * GNU getopt(3) as qemu-io's commands use it: short options only, clustered (`-qP0`), an option
 * argument attached or in the next word (whatever it looks like), operands may come before or
 * after options (permutation, so `read 0 -P 1 512` works and `read 0 -1` is option -1), and
 * `--` ends the options. Options come out one at a time, so a command reacts to them in order,
 * as qemu-io's switch statements do.
 */
export type GetoptItem = { opt: string; arg?: string } | { error: string };

export class Getopt {
  /** Non-option words in order; complete once next() has returned null. */
  readonly operands: string[] = [];
  private index = 1;
  private cluster = '';
  private readonly takesArg = new Map<string, boolean>();

  /** argv[0] is the command name, used in messages; optstring as getopt's ("bCl:pP:qs:v"). */
  constructor(private readonly argv: readonly string[], optstring: string) {
    for (let i = 0; i < optstring.length; i++) {
      const c = optstring[i]!;
      if (c === ':') continue;
      this.takesArg.set(c, optstring[i + 1] === ':');
    }
  }

  next(): GetoptItem | null {
    while (this.cluster === '') {
      if (this.index >= this.argv.length) return null;
      const word = this.argv[this.index++]!;
      if (word === '--') {
        this.operands.push(...this.argv.slice(this.index));
        this.index = this.argv.length;
        return null;
      }
      if (word.length > 1 && word.startsWith('-')) this.cluster = word.slice(1);
      else this.operands.push(word);
    }
    const c = this.cluster[0]!;
    this.cluster = this.cluster.slice(1);
    const name = this.argv[0];
    const takes = c === ':' ? undefined : this.takesArg.get(c);
    if (takes === undefined) {
      this.cluster = '';
      return { error: `${name}: invalid option -- '${c}'` };
    }
    if (!takes) return { opt: c };
    if (this.cluster !== '') {
      const arg = this.cluster;
      this.cluster = '';
      return { opt: c, arg };
    }
    if (this.index >= this.argv.length) return { error: `${name}: option requires an argument -- '${c}'` };
    return { opt: c, arg: this.argv[this.index++]! };
  }
}
