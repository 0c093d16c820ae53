// Files named by a traced process (its /proc/PID/maps, its root directory, its ELF headers) are
// opened here. We run as root and the process may be hostile: a container controls its own
// filesystem, so a name it shows us may be a symbolic link out of its root, a FIFO that blocks an
// open or a read forever, a device whose open has effects, or a file too large to parse.
//
// A path under /proc/PID/root/ is resolved by the kernel inside that root (openat2 with
// RESOLVE_IN_ROOT: `..` and absolute symlinks stay in it; no magic links). Every file is first
// opened O_PATH, which opens nothing (no FIFO wait, no device open), checked to be a regular
// file no larger than the cap, and only then reopened for reading, non-blocking.
#pragma once

#include <napi.h>
#include <sys/stat.h>

#include <cstdint>
#include <string>

namespace ebpf_leak {

// Larger files are refused: nothing we read from a target's files is legitimately this big
// (separate debug files have their own cap in the symbolizer).
constexpr uint64_t kMaxTargetFileBytes = 2ull << 30;

// "/proc/123/root/usr/lib/x.so" -> root "/proc/123/root", rest "usr/lib/x.so" ("." for the root).
bool SplitProcRoot(const std::string& path, std::string* root, std::string* rest);

// An fd open for reading (O_CLOEXEC, blocking reads on a regular file), or -1 with *error set to
// a sentence that names the path and why it was refused. *st is the file's stat.
int OpenTargetFile(const std::string& path, struct stat* st, std::string* error,
                   uint64_t max_bytes = kMaxTargetFileBytes);

// The ELEAK_* code for a failed OpenTargetFile(), from the errno it left.
std::string TargetFileErrorCode(int err);

// openTargetFile(path: string, maxBytes?: number) => fd (the caller closes it); throws an Error
// with code ELEAK_UNSAFE_FILE (refused) or ELEAK_LIB_NOT_FOUND (missing, unreadable).
Napi::Value OpenTargetFileJs(const Napi::CallbackInfo& info);

}  // namespace ebpf_leak
