// Worker results handed to JS without a copy on the JS thread (a million-block snapshot is ~56 MB,
// a symbolizer batch a few MB): the ArrayBuffer owns the vector and frees it when collected.
#pragma once

#include <napi.h>

#include <utility>
#include <vector>

namespace ebpf_leak {

template <typename T>
Napi::ArrayBuffer TakeAsArrayBuffer(Napi::Env env, std::vector<T>&& items) {
  if (items.empty()) return Napi::ArrayBuffer::New(env, 0);
  auto* owned = new std::vector<T>(std::move(items));
  return Napi::ArrayBuffer::New(
      env, owned->data(), owned->size() * sizeof(T),
      [](Napi::Env, void*, std::vector<T>* v) { delete v; }, owned);
}

// Uint8Array, Int32Array, Uint32Array, ... over the vector's memory.
template <typename T>
Napi::TypedArrayOf<T> TakeAsTypedArray(Napi::Env env, std::vector<T>&& items) {
  size_t count = items.size();
  return Napi::TypedArrayOf<T>::New(env, count, TakeAsArrayBuffer(env, std::move(items)), 0);
}

}  // namespace ebpf_leak
