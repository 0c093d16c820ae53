#include "addon/malloc_policy.h"

#include <malloc.h>

namespace ebpf_leak {

Napi::Value KeepArenasTrimmedJs(const Napi::CallbackInfo& info) {
  bool ok = mallopt(M_MMAP_THRESHOLD, 128 << 10) == 1;
  ok = mallopt(M_TRIM_THRESHOLD, 256 << 10) == 1 && ok;
  return Napi::Boolean::New(info.Env(), ok);
}

}  // namespace ebpf_leak
