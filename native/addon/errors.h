// Errors crossing into JS carry a stable `code` (ELEAK_*); lib/errors.ts turns them into typed
// classes.
#pragma once

#include <napi.h>

#include "addon/native_error.h"

namespace ebpf_leak {

Napi::Error ToJsError(Napi::Env env, const NativeError& e);

}  // namespace ebpf_leak
