// The program a `command` trace started, with the parts of ChildProcess that callers use: pid,
// the stdio streams, exitCode / signalCode, kill(), ref() / unref(), 'exit' and 'close'.
//
// Not a ChildProcess: child_process.spawn() forks this whole process on the JS thread, and
// copying the page tables of a test runner's 400-800 MB held the event loop 12-24 ms in every
// trace() (native/process/held_process.h). The native side spawns with posix_spawn() on a worker thread
// and reaps the exit from a pidfd on a thread of its own.
import { EventEmitter } from 'node:events';
import { Socket } from 'node:net';
import { constants } from 'node:os';
import type { Readable, Writable } from 'node:stream';
import type { NativeAddon, NativeHeldProcess, NativeHeldProcessConfig } from '../native/addon.js';
import { InvalidOptionError } from '../errors.js';

export interface ProcessExit {
  /** Exit status; null when a signal ended the program. */
  code: number | null;
  /** The signal that ended the program; null when it exited. */
  signal: NodeJS.Signals | null;
}

export interface TracedProcessEvents {
  /** The program ended: its exit status, or the signal that ended it. */
  exit: [code: number | null, signal: NodeJS.Signals | null];
  /** After 'exit', once the stdio streams (stdio: 'pipe') have closed as well. */
  close: [code: number | null, signal: NodeJS.Signals | null];
}

export const tracedProcessEvents = ['exit', 'close'] as const satisfies readonly (keyof TracedProcessEvents)[];

/** Signal number -> name. Several names share a number (SIGIOT is SIGABRT, SIGPOLL is SIGIO): the
 *  first one listed is the one people know, and a later alias must not replace it. */
export const signalNames: ReadonlyMap<number, NodeJS.Signals> = (() => {
  const names = new Map<number, NodeJS.Signals>();
  for (const [name, n] of Object.entries(constants.signals)) if (!names.has(n)) names.set(n, name as NodeJS.Signals);
  return names;
})();

export class TracedProcess extends EventEmitter<TracedProcessEvents> {
  readonly pid: number;
  /** With stdio: 'pipe', the program's fd 0; otherwise null. */
  readonly stdin: Writable | null;
  /** With stdio: 'pipe', the program's fd 1; otherwise null. */
  readonly stdout: Readable | null;
  /** With stdio: 'pipe', the program's fd 2; otherwise null. */
  readonly stderr: Readable | null;
  readonly stdio: readonly [Writable | null, Readable | null, Readable | null];
  /** Exit status once it has exited; null before, or when a signal ended it. */
  exitCode: number | null = null;
  /** The signal that ended it; null before, or when it exited. */
  signalCode: NodeJS.Signals | null = null;
  /** kill() has delivered a signal to it. */
  killed = false;
  /** Resolves when the program has ended. */
  readonly exited: Promise<ProcessExit>;

  readonly #native: NativeHeldProcess;
  #resolveExited!: (exit: ProcessExit) => void;
  #ended = false;
  /** Output streams not closed yet: 'close' waits for them. */
  #openOutputs = 0;

  /** Spawns the launcher held before exec; `release()` lets it run the program. */
  static async start(addon: NativeAddon, config: NativeHeldProcessConfig): Promise<TracedProcess> {
    let started: TracedProcess | undefined;
    let early: [number | null, number | null] | undefined;
    const native = new addon.HeldProcess(config, (code, signal) => {
      if (started) started.#onExit(code, signal);
      else early = [code, signal];
    });
    const { pid, stdio } = await native.start();
    started = new TracedProcess(native, pid, stdio);
    if (early) started.#onExit(...early);
    return started;
  }

  private constructor(native: NativeHeldProcess, pid: number, fds: readonly [number, number, number]) {
    super();
    this.#native = native;
    this.pid = pid;
    this.exited = new Promise((resolve) => (this.#resolveExited = resolve));
    this.stdin = this.#stream(fds[0], false) as Writable | null;
    this.stdout = this.#stream(fds[1], true) as Readable | null;
    this.stderr = this.#stream(fds[2], true) as Readable | null;
    this.stdio = [this.stdin, this.stdout, this.stderr];
  }

  /** @internal The launcher runs the program: called by trace() once the probes are attached. */
  release(): boolean {
    return this.#native.release();
  }

  /** Sends a signal (default SIGTERM); false when the program has already ended. */
  kill(signal: NodeJS.Signals | number = 'SIGTERM'): boolean {
    const number = typeof signal === 'number' ? signal : constants.signals[signal];
    if (number === undefined) throw new InvalidOptionError(`kill(): unknown signal ${String(signal)}; use a name from os.constants.signals or its number`);
    const sent = this.#native.kill(number);
    if (sent) this.killed = true;
    return sent;
  }

  /** The program's exit keeps the event loop alive (the default), as with ChildProcess. */
  ref(): void {
    this.#native.ref();
  }

  /** The event loop may end before the program does. */
  unref(): void {
    this.#native.unref();
  }

  #stream(fd: number, readable: boolean): Socket | null {
    if (fd < 0) return null;
    const socket = new Socket({ fd, readable, writable: !readable });
    if (readable) {
      this.#openOutputs++;
      socket.once('close', () => {
        this.#openOutputs--;
        this.#maybeClose();
      });
    }
    return socket;
  }

  #onExit(code: number | null, signal: number | null): void {
    this.#native.close();
    this.#ended = true;
    // As ChildProcess does: nobody reads stdin any more, and output nobody consumes is drained
    // so that the streams end and 'close' comes.
    this.stdin?.destroy();
    for (const output of [this.stdout, this.stderr]) if (output?.readableFlowing === null) output.resume();
    this.exitCode = code;
    this.signalCode = signal === null ? null : (signalNames.get(signal) ?? null);
    this.emit('exit', this.exitCode, this.signalCode);
    this.#resolveExited({ code: this.exitCode, signal: this.signalCode });
    this.#maybeClose();
  }

  #maybeClose(): void {
    if (!this.#ended || this.#openOutputs !== 0) return;
    this.#openOutputs = -1; // once
    this.emit('close', this.exitCode, this.signalCode);
  }
}
