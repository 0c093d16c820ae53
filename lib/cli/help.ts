// The help texts, with each command's options printed from the option table
// (lib/cli/options.ts), and the same table as Markdown for docs/cli.md.
import type { HelpTopic, UsageError } from './args.js';
import { cliOptions, optionsOf, type CliCommandName, type CliOption } from './options.js';

const WIDTH = 80;
const HELP_COLUMN = 25;

/** The option's spelling in the help: `-p, --pid PID`, `--gen-suppressions[=valgrind|lsan]`. */
export function optionSpelling(o: CliOption): string {
  const long = `--${o.name}${o.value !== undefined ? ` ${o.value}` : ''}${o.optionalValue !== undefined ? `[=${o.optionalValue}]` : ''}`;
  return o.short !== undefined ? `-${o.short}, ${long}` : long;
}

/** The option's help with its default, as one sentence list. */
function description(o: CliOption): string {
  return o.default !== undefined ? `${o.help} Default: ${o.default}.` : o.help;
}

/** Words wrapped to `width` columns. "Default:" stays on one line with the word before it and
 *  its value's first word, so "off. Default: 5." is read as one. */
function wrap(text: string, width: number): string[] {
  const glued = text.replace(/(\S+) Default: (\S+)/g, '$1\u00a0Default:\u00a0$2');
  const lines: string[] = [];
  let line = '';
  for (const word of glued.split(' ')) {
    if (line !== '' && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === '' ? word : `${line} ${word}`;
    }
  }
  if (line !== '') lines.push(line);
  return lines.map((l) => l.replace(/\u00a0/g, ' '));
}

/** One option as help lines: the spelling, then the description from column 25. */
function optionHelp(o: CliOption): string {
  const spelling = `  ${optionSpelling(o)}`;
  const body = wrap(description(o), WIDTH - HELP_COLUMN);
  const indent = ' '.repeat(HELP_COLUMN);
  const first = spelling.length < HELP_COLUMN ? spelling.padEnd(HELP_COLUMN) + body.shift() : spelling;
  return [first, ...body.map((l) => indent + l)].join('\n');
}

function optionsHelp(command: CliCommandName): string {
  return optionsOf(command).map(optionHelp).join('\n');
}

export const MAIN_USAGE =
  'usage: ebpf-leak run [OPTIONS] -- COMMAND [ARGS...]\n       ebpf-leak attach -p PID [OPTIONS]';
export const RUN_USAGE = 'usage: ebpf-leak run [OPTIONS] [--] COMMAND [ARGS...]';
export const ATTACH_USAGE = 'usage: ebpf-leak attach -p PID [OPTIONS]';

export const MAIN_HELP = `ebpf-leak - find native memory leaks by tracing malloc/free with eBPF uprobes

Usage:
  ebpf-leak run [OPTIONS] -- COMMAND [ARGS...]
  ebpf-leak attach -p PID [OPTIONS]
  ebpf-leak help [run | attach]
  ebpf-leak --help | --version

Commands:
  run       Start COMMAND and trace it from its first instruction; when it
            exits, report the heap blocks still allocated, grouped by stack.
  attach    Trace a running process: print the top allocation stacks every few
            seconds, and a report when it exits, on Ctrl-C, or after --duration.
  help      Show the help of a command (same as 'ebpf-leak COMMAND --help').

Options:
  -h, --help    Show this help and exit.
  --version     Print the version and exit.

No recompiling, no LD_PRELOAD: uprobes on the target's allocator (glibc's
malloc, free, calloc, realloc, ...) count allocations in the kernel while the
program runs. Each allocator call traps into the kernel, so malloc-heavy
programs run a few times slower (see docs/performance.md). Needs Linux with
BTF and uprobes, and root (or the CAP_BPF and CAP_PERFMON capabilities).

The human-readable output goes to standard error; standard output is left to the
traced program (and to '--json -').

Exit status:
  run       128+N if signal N killed the program; else the --error-exitcode
            value when blocks were still allocated at exit or heap errors were
            seen; else 3 when the data is incomplete (inconclusive); else the
            program's exit status
  attach    the --error-exitcode value when blocks were still allocated; else 3
            when the data is incomplete; else 0
  2         usage error, or tracing failed (the message says why and what to do)

Examples:
  ebpf-leak run -- ./myprog --input data.txt
  ebpf-leak run --error-exitcode 7 --json leaks.json -- ./unit-tests
  ebpf-leak attach -p 1234 --interval 10
  ebpf-leak help run
`;

export const RUN_HELP = `Usage: ebpf-leak run [OPTIONS] [--] COMMAND [ARGS...]

Start COMMAND (a path, or a name looked up in PATH) held before exec, attach
the probes, then let it run, so every allocation from its first instruction is
seen. When it exits, print a valgrind-style report: the HEAP SUMMARY, the
blocks still allocated grouped by allocation stack (largest first), and the
LEAK SUMMARY. The program keeps ebpf-leak's stdin, stdout and stderr; the
report goes to stderr.

Options are read up to COMMAND; everything after COMMAND is passed to it. Put
'--' before COMMAND when it starts with '-' (or simply always).

Options:
${optionsHelp('run')}

Signals: SIGINT, SIGTERM and SIGHUP sent to ebpf-leak are passed on to the
program (a Ctrl-C in the terminal reaches both already, so it is not sent
twice); the report is printed when the program exits.

Every block still allocated at exit counts, including ones a program keeps
until exit on purpose: printf() to a pipe or a file, for one, allocates a
4,096-byte stdout buffer that glibc never frees.

Exit status:
  (the first that applies)
  128+N when signal N killed the program (like a shell, and like valgrind:
  a crash is reported whatever was found);
  N, with --error-exitcode N, when blocks were still allocated at exit or heap
  errors were seen;
  3 when the data is incomplete, so leaks may be missing (inconclusive),
  unless --allow-inconclusive;
  the program's exit status;
  2 on a usage error, or when tracing failed (not permitted, no BTF, command
  not found, ...; the message says what to do).

Examples:
  ebpf-leak run -- ./myprog input.txt
  ebpf-leak run --top 3 --json leaks.json -- ./myprog
  ebpf-leak run --error-exitcode 7 -- ./unit-tests   # CI: fail on leaks
  ebpf-leak run --top 0 --verbose -- ./myprog   # every group, with addresses
`;

export const ATTACH_HELP = `Usage: ebpf-leak attach -p PID [OPTIONS]

Attach to the running process PID and trace its allocations from now on.
Every --interval seconds print the stacks holding the most outstanding bytes
(like BCC's memleak). When the process exits, on Ctrl-C (SIGINT), SIGTERM or
SIGHUP, or after --duration, print the report of the blocks allocated while
tracing that are still allocated, and detach; the process keeps running.
Blocks allocated before the attach are not seen; their frees are counted as
unknown frees.

Options:
${optionsHelp('attach')}

The periodic output and the report go to stderr. A second SIGINT, SIGTERM or
SIGHUP while the report is being made ends ebpf-leak at once.

Exit status:
  0 when tracing ended (the process's own status is in the report);
  N, with --error-exitcode N, when blocks were still allocated;
  3 when the data is incomplete (inconclusive), unless --allow-inconclusive;
  128+N when a second signal N ended ebpf-leak before the report;
  2 on a usage error, or when tracing failed (not permitted, no such process,
  ...; the message says what to do).

Examples:
  ebpf-leak attach -p 1234
  ebpf-leak attach -p "$(pidof myserver)" --interval 30 --top 5
  ebpf-leak attach -p 1234 --interval 0 --duration 60 --json leaks.json
`;

export function helpText(topic: HelpTopic): string {
  return topic === 'run' ? RUN_HELP : topic === 'attach' ? ATTACH_HELP : MAIN_HELP;
}

export function usageLine(topic: HelpTopic): string {
  return topic === 'run' ? RUN_USAGE : topic === 'attach' ? ATTACH_USAGE : MAIN_USAGE;
}

/** What a usage error prints on stderr (before exiting 2). */
export function formatUsageError(err: UsageError): string {
  const help = err.topic === 'main' ? 'ebpf-leak --help' : `ebpf-leak ${err.topic} --help`;
  return `ebpf-leak: ${err.message}\n${usageLine(err.topic)}\ntry '${help}'\n`;
}

/** The option table as Markdown, for docs/cli.md (test/unit/cli-options.test.ts keeps it current). */
export function optionsMarkdown(): string {
  const cell = (s: string) => s.replace(/\|/g, '\\|');
  const rows = cliOptions.map((o) => {
    const commands = o.commands.length === 2 ? 'both' : o.commands.join(', ');
    const library = o.traceOption !== undefined ? `\`${o.traceOption}\`` : '';
    return `| \`${cell(optionSpelling(o))}\` | ${commands} | ${cell(o.default ?? '')} | ${library} | ${cell(o.help)} |`;
  });
  return ['| option | commands | default | trace() option | meaning |', '|---|---|---|---|---|', ...rows].join('\n') + '\n';
}
