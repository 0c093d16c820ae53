// The entry-probe placements of one file, decided on a worker thread (lib/placement.ts
// placeEntryProbesOffThread), so that loading the x86 decoder keeps off the event loop.
import { parentPort, workerData } from 'node:worker_threads';
import { placeEntryProbe, type PlacementRequest, type ProbePlacement } from './placement.js';

const { path, requests, placement } = workerData as { path: string; requests: PlacementRequest[]; placement: ProbePlacement };
parentPort!.postMessage(requests.map((r) => placeEntryProbe(path, r.fn, r.functionOffset, r.size, placement)));
