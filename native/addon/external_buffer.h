// Worker results handed to JS without a copy on the JS thread (a million-block snapshot is ~56 MB,
// a symbolizer batch a few MB): the ArrayBuffer owns the vector and frees it when collected. V8 is
// told of the memory, so that it collects these buffers in step with what they hold rather than
// with the few bytes of handle it sees of each.
#pragma once

#include <napi.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace ebpf_leak {

template <typename T>
Napi::ArrayBuffer TakeAsArrayBuffer(Napi::Env env, std::vector<T>&& items) {
  if (items.empty()) return Napi::ArrayBuffer::New(env, 0);
  auto* owned = new std::vector<T>(std::move(items));
  int64_t bytes = static_cast<int64_t>(owned->size() * sizeof(T));
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(
      env, owned->data(), owned->size() * sizeof(T),
      [](Napi::Env env, void*, std::vector<T>* v) {
        Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(v->size() * sizeof(T)));
        delete v;
      },
      owned);
  Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
  return buffer;
}

// Uint8Array, Int32Array, Uint32Array, ... over the vector's memory.
template <typename T>
Napi::TypedArrayOf<T> TakeAsTypedArray(Napi::Env env, std::vector<T>&& items) {
  size_t count = items.size();
  return Napi::TypedArrayOf<T>::New(env, count, TakeAsArrayBuffer(env, std::move(items)), 0);
}

}  // namespace ebpf_leak
