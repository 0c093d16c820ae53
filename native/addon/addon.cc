// Module entry: per-env state, the cleanup hook, and the exports (see lib/native.ts for types).
#include <napi.h>

#include <vector>

#include "addon/addon_data.h"
#include "target/elf_file.h"
#include "addon/errors.h"
#include "process/held_process.h"
#include "abi/leak.h"
#include "process/run_program.h"
#include "addon/release_buffer.h"
#include "addon/malloc_policy.h"
#include "symbols/symbolizer.h"
#include "target/target_file.h"
#include "tracer/tracer.h"
#include "unwind/unwind_js.h"
#if defined(__x86_64__)
#include "x86/x86_decoder.h"
#endif

namespace ebpf_leak {
namespace {

void CloseAll(AddonData* data) {
  // Close() does not erase from the set; the destructor does, later.
  std::vector<Tracer*> live(data->tracers.begin(), data->tracers.end());
  for (Tracer* t : live) t->Close();
  std::vector<HeldProcess*> held(data->held_processes.begin(), data->held_processes.end());
  for (HeldProcess* p : held) p->Close();
}

// Struct sizes, so lib/ can check that its decoders match this build's leak.h.
Napi::Object Layout(Napi::Env env) {
  Napi::Object layout = Napi::Object::New(env);
  layout.Set("block", static_cast<double>(sizeof(leak_block)));
  layout.Set("timedBlock", static_cast<double>(sizeof(leak_timed_block)));
  layout.Set("counters", static_cast<double>(sizeof(leak_counters)));
  layout.Set("event", static_cast<double>(sizeof(leak_event)));
  layout.Set("module", static_cast<double>(sizeof(leak_module)));
  layout.Set("heapError", static_cast<double>(sizeof(leak_heap_error)));
  return layout;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InstallLibbpfPrint();
  auto* data = new AddonData();
  env.SetInstanceData(data);
  env.AddCleanupHook([data]() { CloseAll(data); });

  exports.Set("Tracer", Tracer::Define(env));
  exports.Set("HeldProcess", HeldProcess::Define(env));
  exports.Set("readElf", Napi::Function::New(env, ReadElf, "readElf"));
  exports.Set("unwindTable", Napi::Function::New(env, UnwindTableJs, "unwindTable"));
  exports.Set("openTargetFile", Napi::Function::New(env, OpenTargetFileJs, "openTargetFile"));
  exports.Set("runProgram", Napi::Function::New(env, RunProgram, "runProgram"));
  exports.Set("releaseBuffer", Napi::Function::New(env, ReleaseBufferJs, "releaseBuffer"));
  exports.Set("keepArenasTrimmed", Napi::Function::New(env, KeepArenasTrimmedJs, "keepArenasTrimmed"));
#if defined(__x86_64__)
  exports.Set("decodeX86", Napi::Function::New(env, DecodeX86, "decodeX86"));
#endif
  exports.Set("layout", Layout(env));
  InitSymbolizer(env, exports);
  return exports;
}

}  // namespace
}  // namespace ebpf_leak

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  return ebpf_leak::Init(env, exports);
}
NODE_API_MODULE(ebpf_leak, InitModule)
