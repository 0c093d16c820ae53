// The one place this addon uses ptrace: a dedicated thread that follows a process tree through its
// exec()s, fork()s and exits, and stops each process at those moments long enough for the tracer
// to bring its own bookkeeping up to date.
//
// Why ptrace, when the probes are BPF: an exec must be seen before the new image runs (its blocks
// start from nothing, and its allocator may be another file to attach to), and a fork's child must
// start with a copy of its parent's blocks taken at the fork, while the parent keeps running. The
// tracepoints are asynchronous to user space; a ptrace event stop holds the process (and, at a
// fork, the child too, which starts stopped) until the handler returns. All ptrace calls come from
// the supervisor's own thread, as ptrace requires. If this process dies, the kernel detaches every
// tracee: nothing is left stopped (no PTRACE_O_EXITKILL).
//
// API (also meant for a memory scan at a process's exit):
//   Supervisor(handler, options); Start(pid, &error) seizes every thread of pid; Stop() detaches.
//   Handler::OnEvent(event) runs on the supervisor thread while the event's thread is stopped:
//     kExec after the new image is mapped, before it runs; kFork with parent and child stopped
//     (return false to let the child run untraced); kExit at PTRACE_EVENT_EXIT, the address space
//     still there (`stopped` false when the process vanished without that stop: SIGKILL).
//   ReadRegisters(tid, ...) inside a handler reads a stopped thread's registers.
//   Pause(pid, work) from any thread: every thread of a traced process stopped, `work` run on the
//   supervisor thread with their registers, the threads resumed as they were.
//   With options.exit_threads, a kExit of a process that ends as a whole (exit_group(), its last
//   thread's exit(), a fatal signal) carries every thread's registers at its own exit stop: the
//   others are held in theirs until the handler returns, so each stack is still where it ended.
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace ebpf_leak::process {

enum class EventKind { kExec, kFork, kExit };

// A thread in a ptrace stop (its exit stop, or a pause), with its registers.
struct StoppedThread {
  pid_t tid = 0;
  bool has_regs = false;
  user_regs_struct regs{};
};

struct Event {
  EventKind kind = EventKind::kExec;
  pid_t pid = 0;          // the process (tgid)
  pid_t tid = 0;          // its stopped thread
  pid_t child = 0;        // kFork: the new process, stopped until the handler returns
  // kFork: the child runs in its parent's address space (vfork(), posix_spawn's
  // clone(CLONE_VM|CLONE_VFORK), any clone(CLONE_VM) of another process) until it execs or exits.
  bool shares_memory = false;
  int wait_status = 0;    // kExit: as waitpid() reports it
  bool stopped = true;    // kExit: false when it exited without an exit stop (memory is gone)
  // kExit with options.exit_threads: the process ends as a whole (not only its first thread,
  // gone by pthread_exit() while others run), and its threads at their exit stops, this one first.
  bool whole = false;
  std::vector<StoppedThread> threads;
};

class Handler {
 public:
  virtual ~Handler() = default;
  // On the supervisor thread; the process stays stopped until this returns. kFork: true to trace
  // the child, false to let it run untraced.
  virtual bool OnEvent(const Event& event) = 0;
  // A signal on its way to thread `tid` of process `pid`, which is stopped: true when it was the
  // handler's own (then not delivered).
  virtual bool OnSignal(pid_t pid, pid_t tid, int signal) { return false; }
};

struct Options {
  bool follow_forks = false;
  bool exit_threads = false;  // see kExit above
};

class Supervisor {
 public:
  Supervisor(Handler* handler, Options options) : handler_(handler), options_(options) {}
  ~Supervisor() { Stop(); }
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts the thread and seizes every thread of `pid` from it. False with `error` set when the
  // process cannot be traced (gone, already traced by a debugger, not permitted).
  bool Start(pid_t pid, std::string* error);
  // Detaches from every tracee (each is interrupted, then let go) and joins the thread.
  void Stop();

  // Children that were not followed (options.follow_forks off), and children lost because the
  // tracer could not keep them (the handler refused them for lack of room).
  uint64_t untraced_children() const { return untraced_.load(); }
  // Processes traced now.
  size_t live_processes() const { return live_.load(); }

  // Inside a handler: the registers of a stopped thread (struct user_regs_struct, `size` bytes).
  static bool ReadRegisters(pid_t tid, void* regs, size_t size);

  // Stops every thread of the traced process `pid`, runs `work` on the supervisor thread with
  // their registers (`stopped_ns`: CLOCK_MONOTONIC when the first was asked to stop), and resumes
  // them. False with `error` when the process is not traced, is exiting, or the tracer stops.
  using PauseWork = std::function<void(const std::vector<StoppedThread>& threads, uint64_t stopped_ns)>;
  bool Pause(pid_t pid, const PauseWork& work, std::string* error);

 private:
  void Run(pid_t pid);
  bool SeizeAll(pid_t pid, std::string* error);
  bool Poll();  // one event handled: true; nothing waiting: false
  void Handle(pid_t tid, int status);
  void OnNewTask(pid_t parent_tid, int event);
  void Gone(pid_t tid, int status);
  void DetachAll();
  void RunPause();
  // One attempt: false with `error` (and `busy` when another attempt may succeed).
  bool PauseOnce(pid_t pid, const PauseWork& work, std::string* error, bool* busy);
  // options.exit_threads: a thread of `pid` at its exit stop.
  void NoteExitingThread(const StoppedThread& t, pid_t pid);
  // A thread of `pid` at its exit stop that ends it (`self`): whether the process ends as a
  // whole; if so, the other threads are waited for at their exit stops (held there: `held`) and
  // all go into `event`.
  void GatherExit(pid_t pid, const StoppedThread& self, Event* event, std::vector<pid_t>* held);

  Handler* handler_;
  Options options_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> untraced_{0};
  std::atomic<size_t> live_{0};
  pid_t root_ = 0;

  // Start()'s answer from the thread.
  std::mutex start_mu_;
  std::condition_variable start_cv_;
  bool started_ = false;
  std::string start_error_;

  // Pause(): one request at a time, run by the supervisor thread.
  std::mutex pause_mu_;
  std::condition_variable pause_cv_;
  std::mutex pause_call_mu_;
  const PauseWork* pause_work_ = nullptr;
  pid_t pause_pid_ = 0;
  bool pause_done_ = false;
  bool pause_ok_ = false;
  std::string pause_error_;

  // Supervisor thread only.
  std::unordered_map<pid_t, pid_t> tasks_;  // traced thread -> its process
  std::set<pid_t> processes_;               // traced processes (tgids) whose exit is not seen yet
  std::set<pid_t> early_stops_;             // new tasks stopped before their parent's event
  std::set<pid_t> detach_at_stop_;          // untraced children, let go at their first stop
  std::set<pid_t> announced_;               // new tasks their parent's event has told us about
  // options.exit_threads: threads that passed their exit stop while their process was ending.
  std::unordered_map<pid_t, std::vector<StoppedThread>> exited_threads_;
};

}  // namespace ebpf_leak::process
