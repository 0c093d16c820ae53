// keepArenasTrimmed(): fixed glibc malloc thresholds for a process that traces for hours (the
// CLI). glibc raises its mmap threshold to the largest block it has freed from mmap (up to 32 MB)
// and lets every thread's arena keep twice that free at its top. The tracer's start-up frees
// blocks of megabytes (the BPF object, unwind tables, debug info); its periodic work then runs on
// several worker threads, each with an arena whose top keeps the most that thread ever held at once,
// so the RSS rises for minutes as those peaks come. malloc_trim() does not help there: it
// returns free pages inside an arena, never its top.
#pragma once

#include <napi.h>

namespace ebpf_leak {

// Fixes the mmap threshold at 128 KiB (glibc's initial value; setting it also stops the raising)
// and trims an arena's top past 256 KiB. Process-wide: for the CLI's process, not a library's host.
Napi::Value KeepArenasTrimmedJs(const Napi::CallbackInfo& info);

}  // namespace ebpf_leak
