// One copy of each stack for the reports a trace keeps: many processes of one program (a shell
// loop, make -j, a pre-fork server's workers) leak and err at the same call sites, and each
// report's symbolized frames would otherwise be a copy of its own, kept for as long as the trace
// runs.
import type { LeakReport, StackFrame } from '../types.js';

function frameKey(frame: StackFrame): string {
  return `${frame.address}\u0001${frame.module ?? ''}\u0001${frame.offset ?? ''}\u0001${frame.buildId ?? ''}\u0001${frame.symbol ?? ''}\u0001${frame.mangled ?? ''}\u0001${frame.file ?? ''}\u0001${frame.line ?? ''}\u0001${frame.inlined ?? ''}`;
}

export class SharedStacks {
  readonly #frames = new Map<string, StackFrame>();
  readonly #stacks = new Map<string, StackFrame[]>();

  /** The shared copy of `stack`, equal to it. */
  stack(stack: StackFrame[]): StackFrame[] {
    if (stack.length === 0) return stack;
    const frames = stack.map((f) => {
      const key = frameKey(f);
      let shared = this.#frames.get(key);
      if (!shared) this.#frames.set(key, (shared = f));
      return shared;
    });
    const key = frames.map(frameKey).join('\u0002');
    let shared = this.#stacks.get(key);
    if (!shared) this.#stacks.set(key, (shared = frames));
    return shared;
  }

  /** `report` with its groups' and errors' stacks shared; changed in place. */
  share(report: LeakReport): LeakReport {
    for (const group of report.leaks) group.stack = this.stack(group.stack);
    for (const error of report.errors ?? []) {
      error.stack = this.stack(error.stack);
      if (error.block) error.block.allocationStack = this.stack(error.block.allocationStack);
      if (error.firstFree) error.firstFree.stack = this.stack(error.firstFree.stack);
    }
    return report;
  }
}
