// Argument parsing, pure: argv in, a typed command or a usage error out, so it is unit tested
// without a kernel. The options themselves are the rows of lib/cli/options.ts.
import { parseArgs } from 'node:util';

import {
  DEFAULT_INTERVAL_S,
  DEFAULT_TOP,
  optionsOf,
  Usage,
  type AttachFlags,
  type CliCommandName,
  type CliOption,
  type CommonFlags,
} from './options.js';

export interface RunCommand extends CommonFlags {
  kind: 'run';
  command: string;
  args: string[];
}

export interface AttachCommand extends CommonFlags {
  kind: 'attach';
  pid: number;
  /** Seconds between periodic top-stacks outputs; 0 turns them off. */
  intervalS: number;
  /** Stop after this many seconds; undefined: until exit or a signal. */
  durationS?: number;
}

export type HelpTopic = 'main' | 'run' | 'attach';

export interface HelpCommand {
  kind: 'help';
  topic: HelpTopic;
}

export interface VersionCommand {
  kind: 'version';
}

export type CliCommand = RunCommand | AttachCommand | HelpCommand | VersionCommand;

export interface UsageError {
  kind: 'usage-error';
  /** One line, without the "ebpf-leak: " prefix. */
  message: string;
  /** Which help to point at. */
  topic: HelpTopic;
}

type Values = Map<string, string | true | string[]>;

function usage(message: string, topic: HelpTopic): UsageError {
  return { kind: 'usage-error', message, topic };
}

/**
 * Reads options from `argv` until the first positional argument (or `--`). Returns the option
 * values (last one wins) and the arguments from the first positional on (`--` dropped).
 * Throws Usage for unknown options, missing values and values given to flags.
 */
function readOptions(argv: readonly string[], spec: readonly CliOption[]): { values: Values; rest: string[] } {
  const byName = new Map(spec.map((o) => [o.name, o]));
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const o of spec) {
    options[o.name] = { type: o.value !== undefined ? 'string' : 'boolean', ...(o.short ? { short: o.short } : {}) };
  }
  const { tokens } = parseArgs({ args: [...argv], options, strict: false, allowPositionals: true, tokens: true });
  const values: Values = new Map();
  for (const token of tokens) {
    if (token.kind === 'option-terminator') return { values, rest: argv.slice(token.index + 1) };
    if (token.kind === 'positional') return { values, rest: argv.slice(token.index) };
    const o = byName.get(token.name);
    if (o === undefined) throw new Usage(`unknown option '${token.rawName}'`);
    if (o.value === undefined) {
      if (token.value !== undefined && o.optionalValue === undefined) throw new Usage(`option '${token.rawName}' takes no value`);
      values.set(token.name, token.value ?? true);
      continue;
    }
    const value = token.value;
    // parseArgs (non-strict) takes the next argument even when it looks like an option.
    if (value === undefined || (!token.inlineValue && value.startsWith('-') && value !== '-')) {
      throw new Usage(`option '${token.rawName}' needs a value`);
    }
    if (o.multiple) {
      const list = values.get(token.name);
      values.set(token.name, Array.isArray(list) ? [...list, value] : [value]);
    } else {
      values.set(token.name, value);
    }
  }
  return { values, rest: [] };
}

/** The flags of `command` from the values read, each row applying its own. */
function flagsOf(command: CliCommandName, values: Values): CommonFlags & AttachFlags {
  const flags: CommonFlags & AttachFlags = {
    top: DEFAULT_TOP,
    events: false,
    verbose: false,
    stacks: true,
    suppressions: [],
    defaultSuppressions: true,
    debugDirs: [],
  };
  for (const o of optionsOf(command)) {
    const v = values.get(o.name);
    if (v !== undefined && o.apply) o.apply(flags, v);
  }
  if (flags.allocator !== undefined && flags.allocator.path === '') {
    throw new Usage(`option '--allocator-symbol' needs '--allocator PATH' (the file that defines the symbols)`);
  }
  return flags;
}

function parseRun(argv: readonly string[]): RunCommand | HelpCommand {
  const { values, rest } = readOptions(argv, optionsOf('run'));
  if (values.get('help') === true) return { kind: 'help', topic: 'run' };
  const flags = flagsOf('run', values);
  const [command, ...args] = rest;
  if (command === undefined) throw new Usage('missing the command to run (put it after --)');
  if (command === '') throw new Usage('the command to run is an empty string');
  return { kind: 'run', ...flags, command, args };
}

function parseAttach(argv: readonly string[]): AttachCommand | HelpCommand {
  const { values, rest } = readOptions(argv, optionsOf('attach'));
  if (values.get('help') === true) return { kind: 'help', topic: 'attach' };
  if (rest.length > 0) {
    throw new Usage(`unexpected argument '${rest[0]}' (give the process with -p PID)`);
  }
  const { pid, intervalS, durationS, ...flags } = flagsOf('attach', values);
  if (pid === undefined) throw new Usage('missing the process to trace: -p PID');
  const cmd: AttachCommand = { kind: 'attach', ...flags, pid, intervalS: intervalS ?? DEFAULT_INTERVAL_S };
  if (durationS !== undefined) cmd.durationS = durationS;
  return cmd;
}

/**
 * Parses the arguments after `ebpf-leak` (i.e. `process.argv.slice(2)`). Never throws, never does
 * I/O: the result is a command to carry out, or a usage error to print (exit status 2).
 */
export function parseCliArgs(argv: readonly string[]): CliCommand | UsageError {
  const [first, ...rest] = argv;
  let topic: HelpTopic = 'main';
  try {
    switch (first) {
      case undefined:
        return usage('missing command: run or attach', 'main');
      case 'run':
        topic = 'run';
        return parseRun(rest);
      case 'attach':
        topic = 'attach';
        return parseAttach(rest);
      case 'help': {
        const [what, extra] = rest;
        if (extra !== undefined) return usage(`unexpected argument '${extra}'`, 'main');
        if (what === undefined) return { kind: 'help', topic: 'main' };
        if (what === 'run' || what === 'attach') return { kind: 'help', topic: what };
        return usage(`no help for '${what}': the commands are run and attach`, 'main');
      }
      case '-h':
      case '--help':
        return { kind: 'help', topic: 'main' };
      case '--version':
        return { kind: 'version' };
      default:
        if (first.startsWith('-')) return usage(`unknown option '${first}'`, 'main');
        return usage(`unknown command '${first}': the commands are run and attach`, 'main');
    }
  } catch (err) {
    if (err instanceof Usage) return usage(err.message, topic);
    throw err;
  }
}
