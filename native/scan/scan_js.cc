// What JS sees of a scan: the object scan() and takeExitScan() resolve to.
#include "scan/scan_js.h"

#include <cstring>
#include <vector>

#include "addon/page_buffer_js.h"

namespace ebpf_leak {

namespace {

template <typename T>
Napi::ArrayBuffer CopyToArrayBuffer(Napi::Env env, const std::vector<T>& v) {
  Napi::ArrayBuffer b = Napi::ArrayBuffer::New(env, v.size() * sizeof(T));
  if (!v.empty()) memcpy(b.Data(), v.data(), v.size() * sizeof(T));
  return b;
}

}  // namespace

Napi::Object ScanOutcomeToJs(Napi::Env env, ScanOutcome* outcome) {
  const ScanResult& result = outcome->result;
  Napi::Object o = Napi::Object::New(env);
  size_t n = result.kind.size();
  o.Set("entries", TakeAsArrayBuffer(env, &outcome->entries));
  o.Set("kinds", Napi::Uint8Array::New(env, n, CopyToArrayBuffer(env, result.kind), 0));
  o.Set("heuristics", Napi::Uint8Array::New(env, n, CopyToArrayBuffer(env, result.heuristic), 0));
  std::vector<double> indirect(result.indirect.begin(), result.indirect.end());
  o.Set("indirect", Napi::Float64Array::New(env, n, CopyToArrayBuffer(env, indirect), 0));
  o.Set("owners", Napi::Uint32Array::New(env, n, CopyToArrayBuffer(env, result.owner), 0));
  o.Set("lostEdges",
        Napi::Uint32Array::New(env, result.lost_edges.size(), CopyToArrayBuffer(env, result.lost_edges), 0));
  Napi::Object stats = Napi::Object::New(env);
  stats.Set("atExit", outcome->at_exit);
  stats.Set("pauseNs", static_cast<double>(outcome->pause_ns));
  stats.Set("scanNs", static_cast<double>(outcome->scan_ns));
  stats.Set("readNs", static_cast<double>(result.stats.read_ns));
  stats.Set("markNs", static_cast<double>(result.stats.mark_ns));
  stats.Set("rootBytes", static_cast<double>(result.stats.root_bytes));
  stats.Set("heapBytes", static_cast<double>(result.stats.heap_bytes));
  stats.Set("blocks", static_cast<double>(n));
  stats.Set("threads", result.stats.threads);
  stats.Set("threadsWithRegisters", result.stats.threads_with_regs);
  o.Set("stats", stats);
  return o;
}

}  // namespace ebpf_leak
