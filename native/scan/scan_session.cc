#include "scan/scan_session.h"

#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "abi/leak.h"
#include "scan/stop_world.h"
#include "addon/monotonic_clock.h"

namespace ebpf_leak {
ScanSession::ScanSession(pid_t pid, const ScanOptions& options, ReadBlocks read_blocks)
    : pid_(pid), options_(options), read_blocks_(std::move(read_blocks)) {}

namespace {

// sigabbrev_np() is newer than the glibc the addon may need (2.28).
std::string SignalName(int sig) {
  static const std::pair<int, const char*> kNames[] = {
      {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
      {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
      {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
      {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGXCPU, "SIGXCPU"},
      {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"}};
  for (const auto& [n, name] : kNames)
    if (n == sig) return name;
  return "number " + std::to_string(sig);
}

}  // namespace

// A killed thread may pass its exit without a stop (the kernel skips it when SIGKILL is pending
// again by then): the first thread's registers are then unknown.
bool LeaderUnheld(const process::Event& event) {
  for (const process::StoppedThread& t : event.threads)
    if (t.tid == event.pid) return !t.has_regs;
  return true;
}

std::vector<ScanThread> ExitThreads(const process::Event& event) {
  std::vector<ScanThread> threads;
  for (const process::StoppedThread& t : event.threads) {
    ScanThread s;
    s.tid = t.tid;
    s.has_regs = t.has_regs;
    s.regs = t.regs;
    s.regs_are_roots = false;
    threads.push_back(s);
  }
  return threads;
}

bool ScanAtProcessExit(const process::Event& event, const leak_block* blocks, size_t count,
                       const ScanOptions& options, ScanResult* result, uint64_t* scan_ns, std::string* error) {
  if (!event.stopped || !event.whole) {
    *error = event.stopped ? "its first thread ended while others ran" : "it ended without an exit stop";
    return false;
  }
  uint64_t t0 = MonotonicNs();
  std::vector<ScanBlock> scan(count);
  for (size_t i = 0; i < count; i++) {
    scan[i].address = blocks[i].address;
    scan[i].size = blocks[i].size_fn & LEAK_SIZE_MASK;
  }
  // Through the held thread: the first one may have let go of the memory already.
  ScanOptions with = options;
  with.skip_main_stack = LeaderUnheld(event);
  bool ok = ScanHeap(event.tid, scan, ExitThreads(event), with, result, error) && result->kind.size() == count;
  *scan_ns = MonotonicNs() - t0;
  return ok;
}

void ScanSession::ScanAtExit(const process::Event& event) {
  std::string why;
  if (!event.stopped) {
    why = WIFSIGNALED(event.wait_status) ? "killed by signal " + SignalName(WTERMSIG(event.wait_status))
                                         : "it ended without an exit stop";
  } else if (!event.whole) {
    why = "its first thread ended (pthread_exit) while others ran: the process's end was not held";
  } else {
    uint64_t held_at = MonotonicNs();
    std::vector<ScanThread> threads = ExitThreads(event);
    auto out = std::make_unique<ScanOutcome>();
    out->at_exit = true;
    ScanOptions options = options_;
    options.skip_main_stack = LeaderUnheld(event);
    // Read through the thread held at its exit stop: the first thread may have let go of the
    // memory already (killed on the way out without a stop), and /proc/PID/maps is then empty.
    bool ok = Scan(event.tid, threads, held_at, out.get(), options);
    std::lock_guard<std::mutex> lock(mu_);
    if (ok) {
      exit_outcome_ = std::move(out);
      exit_error_.clear();
    } else {
      exit_error_ = "the scan at exit failed: its memory could not be read";
    }
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!exit_outcome_) exit_error_ = why;
}

bool ScanSession::Scan(pid_t pid, const std::vector<ScanThread>& threads, uint64_t stopped_ns, ScanOutcome* out) {
  return Scan(pid, threads, stopped_ns, out, options_);
}

bool ScanSession::Scan(pid_t pid, const std::vector<ScanThread>& threads, uint64_t stopped_ns, ScanOutcome* out,
                       const ScanOptions& options) {
  uint64_t t0 = MonotonicNs();
  if (!read_blocks_(&out->entries)) return false;
  size_t n = out->entries.size() / sizeof(leak_block);
  std::vector<ScanBlock> blocks(n);
  const auto* records = reinterpret_cast<const leak_block*>(out->entries.data());
  for (size_t i = 0; i < n; i++) {
    blocks[i].address = records[i].address;
    blocks[i].size = records[i].size_fn & LEAK_SIZE_MASK;
  }
  std::string error;
  if (!ScanHeap(pid, blocks, threads, options, &out->result, &error)) {
    out->result = ScanResult{};
    return false;
  }
  uint64_t t1 = MonotonicNs();
  out->scan_ns = t1 - t0;
  out->pause_ns = t1 - stopped_ns;
  return out->result.kind.size() == n;
}

bool ScanSession::ScanNow(process::Supervisor* supervisor, ScanOutcome* out, std::string* error) {
  bool scanned = false;
  if (supervisor != nullptr) {
    // Followed from its start: its supervisor holds it, and is the only one that may.
    auto work = [&](const std::vector<process::StoppedThread>& stopped, uint64_t stopped_ns) {
      std::vector<ScanThread> threads;
      for (const process::StoppedThread& t : stopped) {
        ScanThread s;
        s.tid = t.tid;
        s.has_regs = t.has_regs;
        s.regs = t.regs;
        threads.push_back(s);
      }
      scanned = Scan(pid_, threads, stopped_ns, out);
    };
    if (!supervisor->Pause(pid_, work, error)) return false;
  } else {
    auto work = [&](const HeldWorld& world) { scanned = Scan(world.pid, world.threads, world.stopped_ns, out); };
    if (!StopOnce(pid_, work, error)) return false;
  }
  if (!scanned) *error = "its memory could not be read";
  return scanned;
}

std::unique_ptr<ScanOutcome> ScanSession::TakeExitOutcome() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::move(exit_outcome_);
}

std::string ScanSession::NotScannedReason() {
  std::lock_guard<std::mutex> lock(mu_);
  if (exit_outcome_) return "";
  if (!exit_error_.empty()) return exit_error_;
  return "it did not exit while traced";
}

}  // namespace ebpf_leak
