// The common end of an async native method: queue the AsyncWorker (it deletes itself once done)
// and hand JS the promise it settles.
#pragma once

#include <napi.h>

namespace ebpf_leak {

template <class Worker>
Napi::Promise QueueForPromise(Worker* worker) {
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace ebpf_leak
