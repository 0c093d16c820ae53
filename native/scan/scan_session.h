// The leak-kind scans of one traced process: in the supervisor's stop at its exit
// (native/process/supervisor.h), and on demand (a brief stop of every thread).
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "abi/leak.h"
#include "addon/page_buffer.h"
#include "process/supervisor.h"
#include "scan/heap_scan.h"

namespace ebpf_leak {

struct ScanOutcome {
  PageBuffer entries;  // the blocks scanned: leak_block records (bpf/leak.h), as snapshot()'s
  ScanResult result;   // per record
  uint64_t pause_ns = 0;  // from every thread stopped to the scan's end
  uint64_t scan_ns = 0;   // reading the table and memory, and the walk
  bool at_exit = false;
};

// The threads a scan at exit sees: those the supervisor held, their registers no roots (memcheck
// checks once every thread is gone, and counts no register then).
std::vector<ScanThread> ExitThreads(const process::Event& event);

// A followed process at its exit stop, its blocks taken out of the table: scans them. False with
// `error` when its memory cannot be read or the exit did not hold the whole process.
bool ScanAtProcessExit(const process::Event& event, const leak_block* blocks, size_t count,
                       const ScanOptions& options, ScanResult* result, uint64_t* scan_ns, std::string* error);

class ScanSession {
 public:
  // Reads the kernel's table of blocks into leak_block records. False when it is gone.
  using ReadBlocks = std::function<bool(PageBuffer*)>;

  ScanSession(pid_t pid, const ScanOptions& options, ReadBlocks read_blocks);

  // On the supervisor's thread, in the process's exit stop: scans it and keeps the outcome, or
  // why there is none.
  void ScanAtExit(const process::Event& event);

  // Stops every thread (through `supervisor` when it traces the process, else with a ptrace
  // attach of its own), scans, resumes. False with `error`.
  bool ScanNow(process::Supervisor* supervisor, ScanOutcome* out, std::string* error);

  // Once the process is gone: the scan made at its exit (null when there is none), and why not.
  std::unique_ptr<ScanOutcome> TakeExitOutcome();
  std::string NotScannedReason();

 private:
  bool Scan(pid_t pid, const std::vector<ScanThread>& threads, uint64_t stopped_ns, ScanOutcome* out);
  bool Scan(pid_t pid, const std::vector<ScanThread>& threads, uint64_t stopped_ns, ScanOutcome* out,
            const ScanOptions& options);

  pid_t pid_;
  ScanOptions options_;
  ReadBlocks read_blocks_;
  std::mutex mu_;
  std::unique_ptr<ScanOutcome> exit_outcome_;
  std::string exit_error_;
};

}  // namespace ebpf_leak
