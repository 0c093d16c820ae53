// What the leak assertions throw. Not EbpfLeakError subclasses: those are failures to trace; these
// are verdicts about the code under test (the trace itself worked).

/** The code under test leaked: `message` is the readable report, `report` the data. */
export class LeakError<R = unknown> extends Error {
  readonly code = 'ELEAK_LEAKED' as const;
  readonly report: R;
  constructor(message: string, report: R) {
    super(message);
    this.name = 'LeakError';
    this.report = report;
  }
}

/** The trace cannot vouch for its answer (events lost, the address map filled, stacks missing,
 *  garbage still changing): the assertion fails rather than pass on partial data. Opt out with
 *  `allowInconclusive: true`. */
export class LeakInconclusiveError<R = unknown> extends Error {
  readonly code = 'ELEAK_INCONCLUSIVE' as const;
  /** One sentence per cause. */
  readonly reasons: readonly string[];
  readonly report: R;
  constructor(reasons: readonly string[], report: R, subject = 'the leak check') {
    super(
      `ebpf-leak: ${subject} is inconclusive, so it fails:\n` +
        reasons.map((r) => `  - ${r}`).join('\n') +
        `\nFix the cause, or pass allowInconclusive: true to accept an answer from partial data.`,
    );
    this.name = 'LeakInconclusiveError';
    this.reasons = reasons;
    this.report = report;
  }
}

/** The code under test released memory wrongly (an invalid, double or mismatched free), as
 *  valgrind's memcheck reports it and its --error-exitcode fails on: `message` carries each error
 *  with its stacks, `report` the data. Opt out with `allowHeapErrors: true`. */
export class HeapErrorsError<R = unknown> extends Error {
  readonly code = 'ELEAK_HEAP_ERRORS' as const;
  readonly report: R;
  constructor(message: string, report: R) {
    super(message);
    this.name = 'HeapErrorsError';
    this.report = report;
  }
}
