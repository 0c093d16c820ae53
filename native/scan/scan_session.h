// The leak-kind scans of one traced process: at its exit (held there by a StopWorld that follows
// it from before it runs), and on demand (a brief stop of every thread).
#pragma once

#include <napi.h>
#include <sys/types.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "../page_buffer.h"
#include "heap_scan.h"
#include "stop_world.h"

namespace ebpf_leak {

struct ScanOutcome {
  PageBuffer entries;  // the blocks scanned: leak_block records (bpf/leak.h), as snapshot()'s
  ScanResult result;   // per record
  uint64_t pause_ns = 0;  // from every thread stopped to the scan's end
  uint64_t scan_ns = 0;   // reading the table and memory, and the walk
  bool at_exit = false;

  // { entries, kinds, heuristics, indirect, stats }
  Napi::Object ToJs(Napi::Env env);
};

class ScanSession {
 public:
  // Reads the kernel's table of blocks into leak_block records. False when it is gone.
  using ReadBlocks = std::function<bool(PageBuffer*)>;

  ScanSession(pid_t pid, const ScanOptions& options, ReadBlocks read_blocks);
  ~ScanSession();

  // Holds the process at its exit from now on (call before it runs the program).
  bool FollowForExit(std::string* error);

  // Stops every thread, scans, resumes. False with `error` when it cannot.
  bool ScanNow(ScanOutcome* out, std::string* error);

  // Once the process is gone: the scan made at its exit (null when it was not held), and why not.
  std::unique_ptr<ScanOutcome> TakeExitOutcome();
  std::string NotScannedReason();

  // Stops following (the process runs on untraced). Idempotent.
  void Stop();

 private:
  void Scan(const HeldWorld& world, ScanOutcome* out);

  pid_t pid_;
  ScanOptions options_;
  ReadBlocks read_blocks_;
  std::mutex mu_;
  std::unique_ptr<StopWorld> follower_;
  std::unique_ptr<ScanOutcome> exit_outcome_;
  std::string exit_error_;
  std::string stopped_reason_;
  bool following_ = false;
};

}  // namespace ebpf_leak
