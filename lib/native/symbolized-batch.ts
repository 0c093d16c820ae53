// The native symbolizer's compact results (native/symbols/symbolizer.cc): strings once each, numbers in
// typed arrays, read in place. The addon used to build an object per frame in its completion
// callback, which held the event loop ~30 ms for 10,000 libc addresses; symbolizeStacks() now
// reads these arrays while it builds its own frames, in slices, with no object in between.

/** One native symbolize() call's results; layout documented in native/symbols/symbolizer.cc. */
export interface SymbolizedBatch {
  /** UTF-8 of each distinct string, back to back. */
  strings: Uint8Array;
  /** String i ends at stringEnds[i] and starts where string i - 1 ends. */
  stringEnds: Uint32Array;
  /** 2 per offset: first frame and frame count, or -1 and the error's string. */
  entries: Int32Array;
  /** 5 per frame: symbol string or -1, file string or -1, line or 0, 1 when inlined, mangled
   *  name or -1. */
  frames: Int32Array;
}

/** One frame for one address, innermost first. */
export interface SymbolizedFrame {
  symbol?: string;
  file?: string;
  line?: number;
  /** This frame was inlined into the next one in the list. */
  inlined: boolean;
  /** The C++ name `symbol` was demangled from. */
  mangled?: string;
}

/** What is known about one offset: its frames (none when nothing is), or why nothing can be. */
export type SymbolizeResult = SymbolizedFrame[] | { error: string };

const FRAME_INTS = 5;

/** Entries by index; frames by index in the whole batch (firstFrame(entry) + k). Each string is
 *  decoded once, and shared by every frame naming it. */
export class SymbolizedBatchReader {
  /** Entries: one per offset of the call. */
  readonly count: number;
  readonly #batch: SymbolizedBatch;
  readonly #bytes: Buffer;
  readonly #strings: Array<string | undefined>;

  constructor(batch: SymbolizedBatch) {
    this.#batch = batch;
    this.count = batch.entries.length >> 1;
    const { strings } = batch;
    this.#bytes = Buffer.from(strings.buffer, strings.byteOffset, strings.byteLength);
    this.#strings = new Array(batch.stringEnds.length);
  }

  /** Why entry `entry` could not be symbolized, or undefined. */
  error(entry: number): string | undefined {
    const e = this.#batch.entries;
    return e[2 * entry]! < 0 ? this.#string(e[2 * entry + 1]!) : undefined;
  }

  firstFrame(entry: number): number {
    return this.#batch.entries[2 * entry]!;
  }

  /** 0 for an entry with an error. */
  frameCount(entry: number): number {
    const e = this.#batch.entries;
    return e[2 * entry]! < 0 ? 0 : e[2 * entry + 1]!;
  }

  symbol(frame: number): string | undefined {
    const s = this.#batch.frames[FRAME_INTS * frame]!;
    return s < 0 ? undefined : this.#string(s);
  }

  file(frame: number): string | undefined {
    const s = this.#batch.frames[FRAME_INTS * frame + 1]!;
    return s < 0 ? undefined : this.#string(s);
  }

  line(frame: number): number | undefined {
    const line = this.#batch.frames[FRAME_INTS * frame + 2]!;
    return line > 0 ? line : undefined;
  }

  inlined(frame: number): boolean {
    return this.#batch.frames[FRAME_INTS * frame + 3] === 1;
  }

  /** The mangled name `symbol(frame)` was demangled from, or undefined. */
  mangled(frame: number): string | undefined {
    const s = this.#batch.frames[FRAME_INTS * frame + 4]!;
    return s < 0 ? undefined : this.#string(s);
  }

  /** Entry `entry` as objects. */
  result(entry: number): SymbolizeResult {
    const error = this.error(entry);
    if (error !== undefined) return { error };
    const first = this.firstFrame(entry);
    return Array.from({ length: this.frameCount(entry) }, (_, k) => {
      const frame = {} as SymbolizedFrame;
      const symbol = this.symbol(first + k);
      const file = this.file(first + k);
      const line = this.line(first + k);
      if (symbol !== undefined) frame.symbol = symbol;
      if (file !== undefined) frame.file = file;
      if (line !== undefined) frame.line = line;
      frame.inlined = this.inlined(first + k);
      const mangled = this.mangled(first + k);
      if (mangled !== undefined) frame.mangled = mangled;
      return frame;
    });
  }

  #string(i: number): string {
    let s = this.#strings[i];
    if (s === undefined) {
      const ends = this.#batch.stringEnds;
      s = this.#bytes.toString('utf8', i === 0 ? 0 : ends[i - 1]!, ends[i]!);
      this.#strings[i] = s;
    }
    return s;
  }
}

/** Every entry as objects, in one go: for a few offsets, or tests. */
export function expandBatch(batch: SymbolizedBatch): SymbolizeResult[] {
  const reader = new SymbolizedBatchReader(batch);
  return Array.from({ length: reader.count }, (_, i) => reader.result(i));
}
