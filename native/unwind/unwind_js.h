// What JS sees of the stack walker (native/unwind/unwinder.h).
#pragma once

#include <napi.h>

#include "unwind/unwinder.h"

namespace ebpf_leak {

// The addon's unwindTable(path) (registered by native/addon/addon.cc).
Napi::Value UnwindTableJs(const Napi::CallbackInfo& info);

// The object Tracer.unwindStats() returns.
Napi::Object UnwindStatsToJs(Napi::Env env, const UnwindStats& stats);

}  // namespace ebpf_leak
