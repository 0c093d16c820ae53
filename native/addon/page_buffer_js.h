// Pages of our own handed to JS as ArrayBuffers (native/addon/page_buffer.h keeps them before).
#pragma once

#include <napi.h>

#include <cstddef>

#include "addon/page_buffer.h"

namespace ebpf_leak {

// An ArrayBuffer over the `size` bytes at `data`, owning the `length` bytes of anonymous pages
// mapped there: they are unmapped when it is collected (by a thread of its own when large).
Napi::ArrayBuffer PagesAsArrayBuffer(Napi::Env env, void* data, size_t size, size_t length);

// An ArrayBuffer over the bytes written to `buffer`, which owns the pages from then on.
Napi::ArrayBuffer TakeAsArrayBuffer(Napi::Env env, PageBuffer* buffer);

}  // namespace ebpf_leak
