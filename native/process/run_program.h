// Runs a short-lived program and collects its output, off the JS thread.
//
// child_process.spawn() forks the whole Node process on the JS thread: copying its page tables
// took 7-15 ms at 150-250 MB of RSS on the bench machine, an event-loop stall of its own.
// posix_spawn() (glibc: clone with CLONE_VM | CLONE_VFORK) copies nothing, and here it runs on a
// worker thread.
#pragma once

#include <napi.h>

namespace ebpf_leak {

// runProgram(file: string, args: string[], env: string[] ("NAME=value"), timeoutMs: number)
//   => Promise<{ status: number | null, signal: number | null, stdout: string, stderr: string }>
// Rejects only when the program cannot be started; a timeout kills it (signal SIGKILL).
Napi::Value RunProgram(const Napi::CallbackInfo& info);

}  // namespace ebpf_leak
