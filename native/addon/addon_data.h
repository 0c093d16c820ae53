// Per-env state (one per Node environment: the main thread and each worker thread).
#pragma once

#include <napi.h>

#include <set>

namespace ebpf_leak {

class HeldProcess;
class Tracer;

struct AddonData {
  // Live tracers, closed by the env cleanup hook so no probe outlives its process or worker.
  std::set<Tracer*> tracers;
  // Started programs, whose exit watch ends with the env (native/process/held_process.h).
  std::set<HeldProcess*> held_processes;

  static AddonData* From(Napi::Env env) { return env.GetInstanceData<AddonData>(); }
};

}  // namespace ebpf_leak
