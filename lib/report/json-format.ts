// The machine-readable report (`--json FILE`): plain JSON, no bigints, stable keys.
//
// Schema, version 1:
//
// {
//   "version": 1,
//   "target": {
//     "pid": 4242,
//     "command": "./seed",          // null when attached by pid
//     "args": ["0"],                // null when attached by pid
//     "exitCode": 0,                // null when still running or killed by a signal
//     "signal": null,               // e.g. "SIGSEGV" when killed by a signal
//     "allocator": "/usr/lib/x86_64-linux-gnu/libc.so.6",
//     "allocatorName": "glibc"      // or "glibc (static)", "jemalloc", "tcmalloc", "mimalloc", "custom"
//   },
//   "durationMs": 12,               // from attach to the report
//   "summary": {                    // valgrind's HEAP SUMMARY, plus what could not be seen
//     "allocs": 11, "frees": 9, "bytesAllocated": 4176,
//     "inUseBlocks": 2, "inUseBytes": 4104,
//     "lostEvents": 0, "droppedAllocations": 0, "unknownFrees": 0,
//     "errors": { "invalid-free": 0, "double-free": 0, "mismatched-free": 0, "notRecorded": 0 },
//     // valgrind's LEAK SUMMARY, only when the target's memory was scanned (see "scan"):
//     "definitelyLost": { "bytes": 8, "blocks": 1 }, "indirectlyLost": { "bytes": 0, "blocks": 0 },
//     "possiblyLost": { "bytes": 0, "blocks": 0 }, "stillReachable": { "bytes": 4096, "blocks": 1 },
//     "reachableViaHeuristic": { "stdstring": { "bytes": 225, "blocks": 1 } }   // when any
//   },
//   "scan": { "scanned": true, "atExit": true, "pauseMs": 3.2, "scanMs": 3.1, "rootBytes": 123896,
//             "heapBytes": 79936, "threads": 1 },   // or { "scanned": false, "reason": "..." };
//                                                   // absent when no scan was asked for
//   "leaks": [                      // blocks still allocated, grouped by stack, largest bytes first
//     {
//       "bytes": 8, "blocks": 1, "largestBlock": 8,
//       "kind": "definite",         // when scanned: definite, indirect, possible or reachable
//       "indirectBytes": 16,        // definite groups only: bytes lost through them
//       "sampleAddresses": ["0x55d0c0a2b2a0"],
//       "stack": [                  // innermost first; [] when stacks were not captured
//         { "address": "0x401136", "module": "/work/seed", "buildId": "ab12...", "offset": "0x1136",
//           "symbol": "main", "file": "seed.c", "line": 22, "inlined": false }
//       ]
//     }
//   ],
//   "errors": [                     // heap errors in the order they happened ([] when none)
//     { "kind": "mismatched-free",  // or "invalid-free", "double-free"
//       "address": "0x55d0c0a2b2a0", "releasedBy": "free", "tid": 4242,
//       "stack": [ ... ],           // the release, the releasing function on top
//       "block": { "size": 10, "allocatedBy": "operator new[]", "offset": 0, "allocationStack": [ ... ] },
//       "firstFree": { "releasedBy": "free", "stack": [ ... ] } }   // double frees only;
//                                 // "stackKept": false there with --keep-stacktraces=alloc
//   ],
//   "suppressed": [                 // what suppression rules left out of "leaks", per rule
//     { "rule": "glibc-stdio-buffer", "source": "default", "bytes": 4096, "blocks": 1, "groups": 1 },
//     { "rule": "parser-cache", "source": "app.supp:3", "bytes": 72, "blocks": 2, "groups": 1,
//       "owned": { "bytes": 40, "blocks": 1 } }  // of those: lost only through the blocks it covered
//   ],
//   "previousImages": [             // images before the last exec (a wrapper, env): totals only
//     { "commandLine": ["/bin/sh", "./wrapper.sh"], "allocs": 40, "frees": 3, "bytesAllocated": 1788,
//       "inUseBlocks": 37, "inUseBytes": 1700 }
//   ],
//   "untraced": "...",              // why the image that exited could not be traced, if so
//   "untracedChildren": 2,          // children that ran untraced (no followForks)
//   "processes": [ { ... } ]        // followForks: one report like this one per process, this first
// }
//
// target also has "commandLine" (the image that exited) and, for a followed child, "parentPid".
//
// In a frame every key but "address" is left out when unknown.

import { writeFile } from 'node:fs/promises';
import type { CheckedLeakReport } from './checked.js';
import type { SuppressionHit } from '../suppressions/rules.js';
import type { BytesBlocks, HeapError, HeapErrorCounts, HeapSummary, LeakGroup, LeakReport, PreviousImage, ScanInfo, StackFrame } from '../types.js';

// The JSON shapes are the library's own types: one definition, so the two cannot drift.
export type JsonStackFrame = StackFrame;
export type JsonLeakGroup = LeakGroup;

export interface JsonReport {
  version: 1;
  target: {
    pid: number;
    command: string | null;
    args: string[] | null;
    exitCode: number | null;
    signal: string | null;
    allocator: string;
    allocatorName: string | null;
    /** The command line of the image that exited, when known. */
    commandLine?: string[];
    /** The process that started this one (followForks). */
    parentPid?: number;
  };
  durationMs: number;
  summary: HeapSummary & { errors: HeapErrorCounts };
  leaks: JsonLeakGroup[];
  errors: HeapError[];
  /** What suppression rules left out of `leaks`, per rule; [] when none applied. */
  suppressed: SuppressionHit[];
  /** Sampling mode only: in-use figures and groups are estimates. */
  sampling?: { everyBytes: number };
  /** Images the process ran before its last exec, oldest first (their totals only). */
  previousImages?: PreviousImage[];
  /** Why the image that exited could not be traced. */
  untraced?: string;
  /** Child processes that ran untraced. */
  untracedChildren?: number;
  /** followForks: one report per traced process, with these same fields, this one's first. */
  processes?: JsonReport[];
  /** Whether the blocks were sorted into leak kinds. */
  scan?: ScanInfo;
}

function bytesBlocks(v: BytesBlocks): BytesBlocks {
  return { bytes: num(v.bytes), blocks: num(v.blocks) };
}

// The types say number, but a count that came through the native layer as a bigint must not make
// JSON.stringify throw.
function num(value: number | bigint): number {
  return typeof value === 'bigint' ? Number(value) : value;
}

function frame(f: StackFrame): JsonStackFrame {
  const out: JsonStackFrame = { address: String(f.address) };
  if (f.module !== undefined) out.module = f.module;
  if (f.buildId !== undefined) out.buildId = f.buildId;
  if (f.offset !== undefined) out.offset = String(f.offset);
  if (f.symbol !== undefined) out.symbol = f.symbol;
  if (f.mangled !== undefined) out.mangled = f.mangled;
  if (f.file !== undefined) out.file = f.file;
  if (f.line !== undefined) out.line = num(f.line);
  if (f.inlined !== undefined) out.inlined = f.inlined;
  return out;
}

function group(g: LeakGroup): JsonLeakGroup {
  return {
    bytes: num(g.bytes),
    blocks: num(g.blocks),
    largestBlock: num(g.largestBlock),
    sampleAddresses: g.sampleAddresses.map(String),
    stack: g.stack.map(frame),
    ...(g.kind !== undefined ? { kind: g.kind } : {}),
    ...(g.indirectBytes !== undefined ? { indirectBytes: num(g.indirectBytes) } : {}),
  };
}

function heapError(e: HeapError): HeapError {
  const out: HeapError = { kind: e.kind, address: e.address, releasedBy: e.releasedBy, tid: num(e.tid), stack: e.stack.map(frame) };
  if (e.block) {
    out.block = {
      size: num(e.block.size),
      allocatedBy: e.block.allocatedBy,
      offset: num(e.block.offset),
      allocationStack: e.block.allocationStack.map(frame),
    };
  }
  if (e.firstFree) {
    out.firstFree = { releasedBy: e.firstFree.releasedBy, stack: e.firstFree.stack.map(frame) };
    if (e.firstFree.stackKept === false) out.firstFree.stackKept = false;
  }
  return out;
}

/** The report as plain JSON-able data (see the schema at the top of this file). */
export function toJsonReport(report: LeakReport): JsonReport {
  const t = report.target;
  const s = report.summary;
  return {
    version: 1,
    target: {
      pid: num(t.pid),
      command: t.command ?? null,
      args: t.args !== undefined ? [...t.args] : t.command !== undefined ? [] : null,
      exitCode: t.exitCode === null ? null : num(t.exitCode),
      signal: t.signal,
      allocator: t.allocator,
      allocatorName: t.allocatorName ?? null,
      ...(t.commandLine ? { commandLine: [...t.commandLine] } : {}),
      ...(t.parentPid !== undefined ? { parentPid: t.parentPid } : {}),
    },
    durationMs: num(report.durationMs),
    summary: {
      allocs: num(s.allocs),
      frees: num(s.frees),
      bytesAllocated: num(s.bytesAllocated),
      inUseBlocks: num(s.inUseBlocks),
      inUseBytes: num(s.inUseBytes),
      lostEvents: num(s.lostEvents),
      droppedAllocations: num(s.droppedAllocations),
      unknownFrees: num(s.unknownFrees),
      errors: {
        'invalid-free': num(s.errors?.['invalid-free'] ?? 0),
        'double-free': num(s.errors?.['double-free'] ?? 0),
        'mismatched-free': num(s.errors?.['mismatched-free'] ?? 0),
        notRecorded: num(s.errors?.notRecorded ?? 0),
      },
      ...(s.definitelyLost ? { definitelyLost: bytesBlocks(s.definitelyLost) } : {}),
      ...(s.indirectlyLost ? { indirectlyLost: bytesBlocks(s.indirectlyLost) } : {}),
      ...(s.possiblyLost ? { possiblyLost: bytesBlocks(s.possiblyLost) } : {}),
      ...(s.stillReachable ? { stillReachable: bytesBlocks(s.stillReachable) } : {}),
      ...(s.reachableViaHeuristic
        ? {
            reachableViaHeuristic: Object.fromEntries(
              Object.entries(s.reachableViaHeuristic).map(([h, v]) => [h, bytesBlocks(v)]),
            ),
          }
        : {}),
    },
    leaks: [...report.leaks].sort((a, b) => num(b.bytes) - num(a.bytes)).map(group),
    errors: (report.errors ?? []).map(heapError),
    suppressed: ('suppressed' in report ? (report as CheckedLeakReport).suppressed : []).map((h) => ({
      rule: h.rule,
      source: h.source,
      bytes: num(h.bytes),
      blocks: num(h.blocks),
      groups: num(h.groups),
      ...(h.owned ? { owned: bytesBlocks(h.owned) } : {}),
    })),
    ...(report.sampling ? { sampling: { everyBytes: num(report.sampling.everyBytes) } } : {}),
    ...(report.previousImages ? { previousImages: report.previousImages.map((i) => ({ ...i, commandLine: [...i.commandLine] })) } : {}),
    ...(report.untraced !== undefined ? { untraced: report.untraced } : {}),
    ...(report.untracedChildren !== undefined ? { untracedChildren: num(report.untracedChildren) } : {}),
    ...(report.processes ? { processes: report.processes.map(toJsonReport) } : {}),
    ...(report.scan ? { scan: { ...report.scan } } : {}),
  };
}

/** The report's JSON text, indented, with a final newline. */
export function stringifyJsonReport(report: LeakReport): string {
  return JSON.stringify(toJsonReport(report), null, 2) + '\n';
}

/** Writes the JSON report to `file`; `-` means standard output. */
export async function writeJsonReport(file: string, report: LeakReport): Promise<void> {
  const text = stringifyJsonReport(report);
  if (file === '-') {
    await new Promise<void>((resolve, reject) => {
      process.stdout.write(text, (err) => (err ? reject(err) : resolve()));
    });
    return;
  }
  await writeFile(file, text);
}
