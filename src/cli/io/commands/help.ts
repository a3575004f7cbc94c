import { FAILED, OK, type CommandDef, type Context, type Status } from '../command.js';

/** help_oneline(): "NAME ARGS -- ONELINE", with the name as the user typed it. */
function oneline(name: string, def: CommandDef): string {
  return `${name} ${def.args !== undefined ? `${def.args} ` : ''}-- ${def.oneline}\n`;
}

export const helpCommand: CommandDef = {
  name: 'help',
  altname: '?',
  argmin: 0,
  argmax: 1,
  args: '[command]',
  noFile: true,
  oneline: 'help for one or all commands',
  async run(ctx: Context, argv: string[]): Promise<Status> {
    if (argv.length === 1) {
      const sorted = [...ctx.commands].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      ctx.print(sorted.map((def) => oneline(def.name, def)).join('') + "\nUse 'help commandname' for extended help.\n");
      return OK;
    }
    const name = argv[1]!;
    const def = ctx.commands.find((c) => c.name === name || c.altname === name);
    if (!def) {
      ctx.print(`command ${name} not found\n`);
      return FAILED;
    }
    ctx.print(oneline(name, def) + (def.help ?? ''));
    return OK;
  },
};
