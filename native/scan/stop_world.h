// Holds a process's threads still while its memory is scanned, with ptrace.
//
// Why ptrace and not a SIGSTOP sent from a BPF program on _exit: a thread in a ptrace-stop runs
// on by itself when its tracer dies (the kernel detaches every tracee of an exiting tracer),
// where a group stopped by SIGSTOP stays stopped until someone sends SIGCONT. And the exit event
// (PTRACE_O_TRACEEXIT) comes after atexit handlers and static destructors, in exit_group(), with
// the memory still mapped: where valgrind checks. A raw exit_group() is held there too; a
// process killed by a signal is not (a thread with SIGKILL pending does not stop).
//
// Every ptrace request must come from the thread that attached, so a StopWorld is one thread of
// its own; callers hand it work. The API is what a scan needs, so a process that is already
// under ptrace (followed across fork and exec) can route it through its own tracer thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "heap_scan.h"

namespace ebpf_leak {

// What a hold hands its work: the stopped process and its threads (registers where known).
struct HeldWorld {
  pid_t pid = 0;
  std::vector<ScanThread> threads;
  uint64_t stopped_ns = 0;  // CLOCK_MONOTONIC when the first thread was stopped
};
using HoldWork = std::function<void(const HeldWorld&)>;

class StopWorld {
 public:
  // Follows `pid` and every thread it creates from now on, from a thread of its own: when the
  // process exits (exit_group(), or the last thread's exit()), runs `at_exit` on that thread
  // while it is held, then lets it exit. Null with `error` when it cannot be traced.
  static std::unique_ptr<StopWorld> Follow(pid_t pid, HoldWork at_exit, std::string* error);

  // Detaches (the process runs on untraced) and joins the thread.
  ~StopWorld();

  // Runs `work` on the tracer thread with every thread stopped, then resumes them. False when
  // the process is gone or exiting.
  bool Pause(HoldWork work);

  // Whether the exit was held (the work ran), or why not: "" while the process runs.
  bool exit_held() const { return exit_held_; }
  std::string not_held_reason() const;

 private:
  StopWorld() = default;
  void Loop(pid_t pid, std::string* error, std::mutex* started_mu, std::condition_variable* started_cv,
            int* started);
  bool Wake();
  void RunPause();
  bool StopAll(HeldWorld* world);
  void ResumeAll(const HeldWorld& world, pid_t except);
  // A thread's exit event: holds the process when it is the process's exit.
  void OnExitEvent(pid_t tid);
  void HoldExit(const ScanThread& exiting);

  pid_t pid_ = 0;
  HoldWork at_exit_;
  std::thread thread_;
  std::atomic<pid_t> thread_tid_{0};
  std::atomic<bool> done_{false};
  std::atomic<bool> detach_{false};
  std::atomic<bool> exit_held_{false};
  std::vector<pid_t> threads_;  // tracer thread only
  // Threads killed while the process exits that went through their exit event before the
  // thread that called exit_group(): their registers there (tracer thread only).
  std::vector<ScanThread> killed_;

  std::mutex mu_;
  std::condition_variable cv_;
  HoldWork pause_work_;   // set by Pause(), run by the tracer thread
  bool pause_done_ = false;
  bool pause_ok_ = false;
  std::string not_held_;  // under mu_
};

// Stops every thread of `pid` (a process nobody traces), runs `work` on the calling thread, and
// detaches. False with `error` when it cannot.
bool StopOnce(pid_t pid, const HoldWork& work, std::string* error);

}  // namespace ebpf_leak
