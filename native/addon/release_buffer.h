// releaseBuffer(buffer): frees an ArrayBuffer the addon handed out now, not when the collector
// gets to it. Work repeated on a timer (a snapshot a second under `attach --interval`) otherwise
// keeps every result it made since the last collection: megabytes each, mapped and resident.
#pragma once

#include <napi.h>

namespace ebpf_leak {

// Detaches `buffer` (its length reads 0 from then on); the addon's finalizer then unmaps or frees
// its memory. Returns whether it was detached: buffers V8 cannot detach are left to the collector.
Napi::Value ReleaseBufferJs(const Napi::CallbackInfo& info);

}  // namespace ebpf_leak
