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
//     "allocator": "/usr/lib/x86_64-linux-gnu/libc.so.6"
//   },
//   "durationMs": 12,               // from attach to the report
//   "summary": {                    // valgrind's HEAP SUMMARY, plus what could not be seen
//     "allocs": 11, "frees": 9, "bytesAllocated": 4176,
//     "inUseBlocks": 2, "inUseBytes": 4104,
//     "lostEvents": 0, "droppedAllocations": 0, "unknownFrees": 0,
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
//   "suppressed": [                 // what suppression rules left out of "leaks", per rule
//     { "rule": "glibc-stdio-buffer", "source": "default", "bytes": 4096, "blocks": 1, "groups": 1 }
//   ]
// }
//
// In a frame every key but "address" is left out when unknown.

import { writeFile } from 'node:fs/promises';
import type { CheckedLeakReport } from './checked.js';
import type { SuppressionHit } from '../suppressions/rules.js';
import type { BytesBlocks, HeapSummary, LeakGroup, LeakReport, ScanInfo, StackFrame } from '../types.js';

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
  };
  durationMs: number;
  summary: HeapSummary;
  leaks: JsonLeakGroup[];
  /** What suppression rules left out of `leaks`, per rule; [] when none applied. */
  suppressed: SuppressionHit[];
  /** Sampling mode only: in-use figures and groups are estimates. */
  sampling?: { everyBytes: number };
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
    suppressed: ('suppressed' in report ? (report as CheckedLeakReport).suppressed : []).map((h) => ({
      rule: h.rule,
      source: h.source,
      bytes: num(h.bytes),
      blocks: num(h.blocks),
      groups: num(h.groups),
    })),
    ...(report.sampling ? { sampling: { everyBytes: num(report.sampling.everyBytes) } } : {}),
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
