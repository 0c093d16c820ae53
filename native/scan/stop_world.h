// Holds a running process's threads still, briefly, while its memory is scanned on demand: a
// process nobody traces (a program ebpf-leak starts is held by its supervisor instead,
// native/process/supervisor.h). A thread in a ptrace-stop runs on by itself when its tracer dies
// (the kernel detaches every tracee of an exiting tracer), where a group stopped by SIGSTOP would
// stay stopped until someone sent SIGCONT.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "scan/heap_scan.h"

namespace ebpf_leak {

// What a hold hands its work: the stopped process and its threads (registers where known).
struct HeldWorld {
  pid_t pid = 0;
  std::vector<ScanThread> threads;
  uint64_t stopped_ns = 0;  // CLOCK_MONOTONIC when the first thread was stopped
};
using HoldWork = std::function<void(const HeldWorld&)>;

// Stops every thread of `pid` (a process nobody traces), runs `work` on the calling thread, and
// detaches. False with `error` when it cannot.
bool StopOnce(pid_t pid, const HoldWork& work, std::string* error);

}  // namespace ebpf_leak
