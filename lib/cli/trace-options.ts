// The trace() options a command line asks for, from the option table's `traceOption` column.
import { cliOptions, type CommonFlags } from './options.js';
import type { CommandTraceOptions, CommonTraceOptions } from '../types.js';

/** What flags can set: the options of every trace(), and run's preload. */
export type TraceFlagOptions = CommonTraceOptions & Pick<CommandTraceOptions, 'preload'>;

/** The library options a command's flags ask for: each row's `traceOption`, when set. */
export function traceOptions(cmd: CommonFlags): TraceFlagOptions {
  const out: TraceFlagOptions = { events: cmd.events, stacks: cmd.stacks };
  const set = <K extends keyof CommonTraceOptions>(key: K, value: CommonTraceOptions[K] | undefined): void => {
    if (value !== undefined) out[key] = value;
  };
  for (const o of cliOptions) {
    switch (o.traceOption) {
      case 'maxAllocations':
      case 'eventBufferBytes':
      case 'stackDepth':
      case 'keepStacktraces':
      case 'probePlacement':
      case 'unwind':
      case 'sampleEveryBytes':
        set(o.traceOption, cmd[o.traceOption]);
        break;
      case 'allocator':
        if (cmd.allocator) out.allocator = cmd.allocator;
        break;
      case 'debugDirs':
        if (cmd.debugDirs.length > 0) out.debugDirs = cmd.debugDirs;
        break;
      case 'followForks':
        if (cmd.followForks) out.followForks = true;
        break;
      case 'leakKinds':
        set('leakKinds', cmd.leakKinds);
        break;
      case 'preload':
        if (cmd.preload) out.preload = true;
        break;
      default:
        break; // events and stacks: always given
    }
  }
  return out;
}
