// Tracer methods over the per-stack state the BPF program keeps: the outstanding bytes and blocks
// per stack, and the stack walker's counters (declared in tracer.h).
#include "tracer/tracer.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

#include "abi/leak.h"
#include "leak.skel.h"
#include "unwind/unwinder.h"

namespace ebpf_leak {

// readStackTotals(): ArrayBuffer of {s64 stack id, s64 bytes, s64 blocks} records, the
// outstanding bytes and blocks of every stack id seen (-1: no stack), kept by the BPF program.
Napi::Value Tracer::ReadStackTotals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr) return env.Null();
  int tid = static_cast<int>(syscall(SYS_gettid));
  SetThreadIgnored(tid, true);
  std::vector<uint8_t> out;
  NativeError error;
  bool ok = DumpHashMap(bpf_map__fd(skel_->maps.stack_totals), sizeof(int64_t),
                        sizeof(leak_stack_total), &out, &error);
  SetThreadIgnored(tid, false);
  if (!ok) {
    ToJsError(env, error).ThrowAsJavaScriptException();
    return env.Null();
  }
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, out.size());
  if (!out.empty()) memcpy(buffer.Data(), out.data(), out.size());
  return buffer;
}

// unwindStats(): the walker's counters and tables; null once closed.
Napi::Value Tracer::UnwindStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr || !unwind_) return env.Null();
  return unwind_->Stats(env);
}

}  // namespace ebpf_leak
