// One file by design: the ptrace thread's loop and the stops it handles (exec, fork, exit, pauses) share that one thread's view of every traced task.
#include "process/supervisor.h"
#include "addon/monotonic_clock.h"
#include "addon/native_error.h"

#include <dirent.h>
#include <linux/kcmp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <elf.h>
#include <fstream>
#include <vector>

namespace ebpf_leak::process {
namespace {

constexpr long kOptions = PTRACE_O_TRACEEXEC | PTRACE_O_TRACEEXIT | PTRACE_O_TRACEFORK |
                          PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE;
// Nothing to wait for: sleep this long before looking again. waitpid() has no descriptor to
// poll, and a blocking one could not be woken by Stop().
constexpr auto kIdleSleep = std::chrono::microseconds(300);

long Trace(int request, pid_t tid, uintptr_t addr = 0, uintptr_t data = 0) {
  return ptrace(static_cast<__ptrace_request>(request), tid, reinterpret_cast<void*>(addr),
                reinterpret_cast<void*>(data));
}

// Waits for each of `tids` to change state, never blocking on one (Stop() could not wake it),
// until `deadline`: `changed(tid, r, status)` sees each change (r < 0: the tid is gone, no status)
// and says whether that tid is done with. Those left in `tids` did not finish in time.
template <typename Changed>
void WaitEach(std::vector<pid_t>* tids, std::chrono::steady_clock::time_point deadline,
              std::chrono::microseconds nap, Changed changed) {
  while (!tids->empty() && std::chrono::steady_clock::now() < deadline) {
    bool any = false;
    for (auto it = tids->begin(); it != tids->end();) {
      int status = 0;
      pid_t r = waitpid(*it, &status, WNOHANG | __WALL | __WNOTHREAD);
      if (r == 0) {
        ++it;
        continue;
      }
      any = true;
      if (changed(*it, r, status))
        it = tids->erase(it);
      else
        ++it;
    }
    if (!any) std::this_thread::sleep_for(nap);
  }
}

// The process a task belongs to (Tgid in /proc/TID/status), or 0 when it is gone.
pid_t TgidOf(pid_t tid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/status", tid);
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, 5, "Tgid:") == 0) return static_cast<pid_t>(atoi(line.c_str() + 5));
  return 0;
}

std::vector<pid_t> ThreadsOf(pid_t pid) {
  std::vector<pid_t> out;
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR* d = opendir(path);
  if (d == nullptr) return out;
  while (dirent* e = readdir(d))
    if (e->d_name[0] >= '0' && e->d_name[0] <= '9') out.push_back(static_cast<pid_t>(atoi(e->d_name)));
  closedir(d);
  return out;
}

bool IsGroupStop(int sig) { return sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU; }

// Longest wait, at a process's exit, for its other threads to reach their exit stops.
constexpr auto kExitGatherWait = std::chrono::seconds(1);

// A thread in a ptrace stop, with its registers.
StoppedThread StoppedAt(pid_t tid) {
  StoppedThread t;
  t.tid = tid;
  iovec iov{&t.regs, sizeof t.regs};
  t.has_regs = Trace(PTRACE_GETREGSET, tid, NT_PRSTATUS, reinterpret_cast<uintptr_t>(&iov)) == 0;
  return t;
}

// The syscall a thread at its exit stop was in: -1 when unknown or none.
long ExitSyscall(const StoppedThread& t) {
#if defined(__x86_64__)
  return t.has_regs ? static_cast<long>(t.regs.orig_rax) : -1;
#elif defined(__aarch64__)
  int nr = -1;
  iovec iov{&nr, sizeof nr};
  return Trace(PTRACE_GETREGSET, t.tid, NT_ARM_SYSTEM_CALL, reinterpret_cast<uintptr_t>(&iov)) == 0 ? nr : -1;
#else
  (void)t;
  return -1;
#endif
}

bool CallsExitGroup(const StoppedThread& t) { return ExitSyscall(t) == SYS_exit_group; }

// Whether a thread at its exit stop got there by its own exit() (a thread ending, not its
// process), rather than exit_group() or being killed.
bool EndsByExit(const StoppedThread& t) { return ExitSyscall(t) == SYS_exit; }

}  // namespace

bool Supervisor::ReadRegisters(pid_t tid, void* regs, size_t size) {
  iovec iov{regs, size};
  return Trace(PTRACE_GETREGSET, tid, NT_PRSTATUS, reinterpret_cast<uintptr_t>(&iov)) == 0;
}

bool Supervisor::Start(pid_t pid, std::string* error) {
  root_ = pid;
  thread_ = std::thread(&Supervisor::Run, this, pid);
  std::unique_lock<std::mutex> lock(start_mu_);
  start_cv_.wait(lock, [this] { return started_; });
  if (start_error_.empty()) return true;
  *error = start_error_;
  lock.unlock();
  thread_.join();
  return false;
}

void Supervisor::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

// Every thread, again until no new one appeared meanwhile: a thread created between the listing
// and its seizing is seized with the next listing (threads made by seized ones are auto-attached).
bool Supervisor::SeizeAll(pid_t pid, std::string* error) {
  for (bool added = true; added;) {
    added = false;
    for (pid_t tid : ThreadsOf(pid)) {
      if (tasks_.count(tid)) continue;
      if (Trace(PTRACE_SEIZE, tid, 0, kOptions) != 0) {
        int e = errno;
        if (e == ESRCH && tid != pid) continue;  // a thread that ended meanwhile
        *error = "cannot follow process " + std::to_string(pid) + " with ptrace: " + ErrnoText(e) +
                 (e == EPERM ? " (it is being debugged or traced already, or ptrace is not permitted)" : "");
        return false;
      }
      tasks_[tid] = pid;
      added = true;
    }
  }
  processes_.insert(pid);
  live_ = processes_.size();
  return true;
}

void Supervisor::Run(pid_t pid) {
  pthread_setname_np(pthread_self(), "ebpf-leak-ptrace");
  std::string error;
  bool ok = SeizeAll(pid, &error);
  if (!ok) DetachAll();
  {
    std::lock_guard<std::mutex> lock(start_mu_);
    start_error_ = ok ? "" : error;
    started_ = true;
  }
  start_cv_.notify_all();
  if (!ok) return;
  while (!stop_) {
    RunPause();
    if (!Poll()) std::this_thread::sleep_for(kIdleSleep);
  }
  {
    std::lock_guard<std::mutex> lock(pause_mu_);
    if (pause_work_ != nullptr && !pause_done_) {
      pause_error_ = "tracing stopped";
      pause_done_ = true;
    }
  }
  pause_cv_.notify_all();
  DetachAll();
}

bool Supervisor::Pause(pid_t pid, const PauseWork& work, std::string* error) {
  std::lock_guard<std::mutex> call(pause_call_mu_);
  std::unique_lock<std::mutex> lock(pause_mu_);
  if (stop_ || !thread_.joinable()) {
    *error = "tracing stopped";
    return false;
  }
  pause_work_ = &work;
  pause_pid_ = pid;
  pause_done_ = false;
  pause_ok_ = false;
  pause_error_.clear();
  pause_cv_.wait(lock, [this] { return pause_done_; });
  pause_work_ = nullptr;
  if (!pause_ok_) *error = pause_error_;
  return pause_ok_;
}

void Supervisor::RunPause() {
  const PauseWork* work;
  pid_t pid;
  {
    std::lock_guard<std::mutex> lock(pause_mu_);
    if (pause_work_ == nullptr || pause_done_) return;
    work = pause_work_;
    pid = pause_pid_;
  }
  std::string error;
  bool ok = false, busy = true;
  // A thread starting or ending meanwhile spoils an attempt: its event is handled, and again.
  for (int attempt = 0; attempt < 5 && !ok && busy; attempt++) ok = PauseOnce(pid, *work, &error, &busy);
  {
    std::lock_guard<std::mutex> lock(pause_mu_);
    pause_ok_ = ok;
    pause_error_ = error;
    pause_done_ = true;
  }
  pause_cv_.notify_all();
}

bool Supervisor::PauseOnce(pid_t pid, const PauseWork& work, std::string* error, bool* busy) {
  *busy = false;
  if (!processes_.count(pid)) {
    *error = "it is not traced, or is exiting";
    return false;
  }
  struct Held {
    pid_t tid;
    int request;  // PTRACE_CONT or PTRACE_LISTEN
    int signal;   // delivered by PTRACE_CONT
  };
  std::vector<pid_t> waiting;
  for (const auto& [t, owner] : tasks_)
    if (owner == pid && !early_stops_.count(t)) waiting.push_back(t);
  uint64_t stopped_ns = MonotonicNs();
  for (pid_t t : waiting) Trace(PTRACE_INTERRUPT, t);
  std::vector<Held> held;
  std::vector<StoppedThread> threads;
  bool spoiled = false;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  WaitEach(&waiting, deadline, std::chrono::microseconds(100), [&](pid_t t, pid_t r, int status) {
    if (r < 0) {
      tasks_.erase(t);
      return true;
    }
    int event = status >> 16;
    if (WIFSTOPPED(status) && (event == 0 || event == PTRACE_EVENT_STOP)) {
      int sig = WSTOPSIG(status);
      Held h{t, PTRACE_CONT, 0};
      if (event == 0 && !handler_->OnSignal(pid, t, sig)) h.signal = sig;  // delivered when it goes on
      else if (IsGroupStop(sig)) h.request = PTRACE_LISTEN;      // stays in its group-stop
      held.push_back(h);
      threads.push_back(StoppedAt(t));
      return true;
    }
    // A fork, a new thread, an exec or an exit: handled as always, and this attempt is off.
    Handle(t, status);
    spoiled = true;
    return true;
  });
  bool ok = !spoiled && waiting.empty() && !threads.empty() && processes_.count(pid);
  if (ok) work(threads, stopped_ns);
  for (const Held& h : held) Trace(h.request, h.tid, 0, static_cast<uintptr_t>(h.signal));
  if (!ok) {
    *busy = spoiled;
    *error = spoiled ? "a thread started or ended during every attempt to stop it"
                     : "its threads did not all stop within 2 s";
  }
  return ok;
}

bool Supervisor::Poll() {
  // Looked at first without reaping: the root is a child of this process (started by another of
  // its threads), whose exit status is its owner's to reap. Only this thread's tracees are seen.
  siginfo_t si{};
  if (waitid(P_ALL, 0, &si, WEXITED | WSTOPPED | WNOHANG | WNOWAIT | __WALL | __WNOTHREAD) != 0 ||
      si.si_pid == 0)
    return false;
  pid_t tid = si.si_pid;
  bool dead = si.si_code == CLD_EXITED || si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED;
  if (dead && tid == root_) {
    // Killed without an exit stop: let its owner reap it, and stop looking at it.
    int status = si.si_code == CLD_EXITED ? W_EXITCODE(si.si_status, 0) : si.si_status;
    if (tasks_.count(tid)) Gone(tid, status);
    // Until the owner reaps it, waitid() keeps answering with it: wait for the others by pid.
    for (auto it = tasks_.begin(); it != tasks_.end();) {
      pid_t t = (it++)->first;
      int st = 0;
      if (waitpid(t, &st, WNOHANG | __WALL | __WNOTHREAD) > 0) Handle(t, st);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return true;
  }
  int status = 0;
  if (waitpid(tid, &status, WNOHANG | __WALL | __WNOTHREAD) <= 0) return false;
  Handle(tid, status);
  return true;
}

void Supervisor::Gone(pid_t tid, int status) {
  auto it = tasks_.find(tid);
  pid_t pid = it == tasks_.end() ? tid : it->second;
  if (it != tasks_.end()) tasks_.erase(it);
  if (tid == pid && processes_.erase(pid)) {
    live_ = processes_.size();
    Event e;
    e.kind = EventKind::kExit;
    e.pid = pid;
    e.tid = tid;
    e.wait_status = status;
    e.stopped = false;
    handler_->OnEvent(e);
  }
}

void Supervisor::Handle(pid_t tid, int status) {
  if (WIFEXITED(status) || WIFSIGNALED(status)) {
    Gone(tid, status);
    return;
  }
  if (!WIFSTOPPED(status)) return;
  int sig = WSTOPSIG(status);
  int event = status >> 16;
  auto known = tasks_.find(tid);
  if (known == tasks_.end()) {
    // A new task auto-attached at its parent's fork or clone, whose stop came before the
    // parent's event: held until that event says what it is.
    early_stops_.insert(tid);
    return;
  }
  pid_t pid = known->second;
  switch (event) {
    case PTRACE_EVENT_FORK:
    case PTRACE_EVENT_VFORK:
    case PTRACE_EVENT_CLONE:
      OnNewTask(tid, event);
      Trace(PTRACE_CONT, tid);
      return;
    case PTRACE_EVENT_EXEC: {
      // Every other thread is gone; the exec'ing one now has the process's id.
      unsigned long former = 0;
      Trace(PTRACE_GETEVENTMSG, tid, 0, reinterpret_cast<uintptr_t>(&former));
      if (static_cast<pid_t>(former) != tid) tasks_.erase(static_cast<pid_t>(former));
      exited_threads_.erase(pid);  // the threads exec killed
      Event e;
      e.kind = EventKind::kExec;
      e.pid = pid;
      e.tid = tid;
      handler_->OnEvent(e);
      Trace(PTRACE_CONT, tid);
      return;
    }
    case PTRACE_EVENT_EXIT: {
      unsigned long wait_status = 0;
      Trace(PTRACE_GETEVENTMSG, tid, 0, reinterpret_cast<uintptr_t>(&wait_status));
      std::vector<pid_t> held;
      // The process ends at its first thread's exit stop, or, when the scan needs every thread,
      // at the stop of the thread that called exit_group(), whichever comes first: a thread
      // killed on the way out may pass its exit without stopping.
      StoppedThread self = StoppedAt(tid);
      bool ends = tid == pid || (options_.exit_threads && CallsExitGroup(self));
      if (ends && processes_.erase(pid)) {
        live_ = processes_.size();
        Event e;
        e.kind = EventKind::kExit;
        e.pid = pid;
        e.tid = tid;
        e.wait_status = static_cast<int>(wait_status);
        if (options_.exit_threads) GatherExit(pid, self, &e, &held);
        handler_->OnEvent(e);
        exited_threads_.erase(pid);
      } else if (tid != pid && options_.exit_threads) {
        NoteExitingThread(self, pid);
      }
      // Let go: its zombie is then its parent's alone to reap.
      for (pid_t t : held) {
        Trace(PTRACE_DETACH, t);
        tasks_.erase(t);
      }
      Trace(PTRACE_DETACH, tid);
      tasks_.erase(tid);
      return;
    }
    case PTRACE_EVENT_STOP:
      if (IsGroupStop(sig)) {
        Trace(PTRACE_LISTEN, tid);  // stays stopped (SIGSTOP, ^Z) until SIGCONT, as untraced
      } else if (detach_at_stop_.erase(tid)) {
        Trace(PTRACE_DETACH, tid);
        tasks_.erase(tid);
      } else {
        Trace(PTRACE_CONT, tid);
      }
      return;
    default:
      // A signal on its way: delivered as it would be untraced, but the handler's own.
      Trace(PTRACE_CONT, tid, 0, handler_->OnSignal(pid, tid, sig) ? 0 : static_cast<uintptr_t>(sig));
      return;
  }
}

// Whether `child` runs in the address space of `pid`: the kernel compares the two (kcmp), which
// also catches clone(CLONE_VM) without CLONE_VFORK; a kernel without kcmp has the event's word.
namespace {
bool SharesMemory(pid_t pid, pid_t child, int event) {
  long same = syscall(SYS_kcmp, pid, child, KCMP_VM, 0, 0);
  if (same >= 0) return same == 0;
  return event == PTRACE_EVENT_VFORK;
}
}  // namespace

// The parent `parent_tid` is stopped at a fork, vfork or clone event; the new task is stopped too
// (it starts in a stop of its own, reported separately, maybe already).
void Supervisor::OnNewTask(pid_t parent_tid, int event) {
  unsigned long msg = 0;
  if (Trace(PTRACE_GETEVENTMSG, parent_tid, 0, reinterpret_cast<uintptr_t>(&msg)) != 0) return;
  pid_t child = static_cast<pid_t>(msg);
  pid_t pid = tasks_[parent_tid];
  bool stopped_already = early_stops_.erase(child) > 0;
  if (event == PTRACE_EVENT_CLONE && TgidOf(child) == pid) {  // a thread
    tasks_[child] = pid;
    if (stopped_already) Trace(PTRACE_CONT, child);
    return;
  }
  bool follow = false;
  if (options_.follow_forks) {
    Event e;
    e.kind = EventKind::kFork;
    e.pid = pid;
    e.tid = parent_tid;
    e.child = child;
    e.shares_memory = SharesMemory(pid, child, event);
    follow = handler_->OnEvent(e);
  }
  tasks_[child] = child;
  if (follow) {
    processes_.insert(child);
    live_ = processes_.size();
    if (stopped_already) Trace(PTRACE_CONT, child);
    return;
  }
  untraced_++;
  if (stopped_already) {
    Trace(PTRACE_DETACH, child);
    tasks_.erase(child);
  } else {
    detach_at_stop_.insert(child);
  }
}

void Supervisor::NoteExitingThread(const StoppedThread& t, pid_t pid) {
  // A thread that ends by itself leaves nothing behind for a scan at the process's exit (its
  // stack is no longer its); one killed on the way out does: its stack is as it was.
  if (!EndsByExit(t)) exited_threads_[pid].push_back(t);
}

void Supervisor::GatherExit(pid_t pid, const StoppedThread& self, Event* event, std::vector<pid_t>* held) {
  std::vector<pid_t> others;
  for (const auto& [t, owner] : tasks_)
    if (owner == pid && t != self.tid) others.push_back(t);
  // The first thread gone by pthread_exit() while others run on: not the process's end.
  if (self.tid == pid && EndsByExit(self) && !others.empty()) return;
  event->whole = true;
  event->threads.push_back(self);
  for (const StoppedThread& t : exited_threads_[pid]) event->threads.push_back(t);
  // The others are being killed: each comes to its exit stop and waits there.
  auto deadline = std::chrono::steady_clock::now() + kExitGatherWait;
  WaitEach(&others, deadline, std::chrono::microseconds(100), [&](pid_t t, pid_t r, int status) {
    if (r < 0 || WIFEXITED(status) || WIFSIGNALED(status)) {
      tasks_.erase(t);
      return true;
    }
    if (WIFSTOPPED(status) && (status >> 16) == PTRACE_EVENT_EXIT) {
      event->threads.push_back(StoppedAt(t));
      held->push_back(t);
      return true;
    }
    Trace(PTRACE_CONT, t);  // on its way to its exit stop
    return false;
  });
  // Still running after that long: their stacks are read whole.
  for (pid_t t : others) {
    StoppedThread unknown;
    unknown.tid = t;
    event->threads.push_back(unknown);
  }
}

// Each tracee is interrupted, waited for (a stop, or its end), and detached with the signal it
// was about to get, if any.
void Supervisor::DetachAll() {
  for (auto& [tid, pid] : tasks_) Trace(PTRACE_INTERRUPT, tid);
  for (pid_t tid : early_stops_) Trace(PTRACE_DETACH, tid);
  early_stops_.clear();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  std::vector<pid_t> tids;
  for (const auto& [tid, pid] : tasks_) tids.push_back(tid);
  WaitEach(&tids, deadline, std::chrono::microseconds(200), [&](pid_t tid, pid_t r, int status) {
    auto owner = tasks_.find(tid);
    pid_t pid = owner != tasks_.end() ? owner->second : tid;
    tasks_.erase(tid);
    if (r < 0 || WIFEXITED(status) || WIFSIGNALED(status)) return true;
    int sig = WSTOPSIG(status);
    int event = status >> 16;
    uintptr_t deliver = (event == 0 && sig != SIGTRAP && !handler_->OnSignal(pid, tid, sig)) ? static_cast<uintptr_t>(sig) : 0;
    if (event == PTRACE_EVENT_STOP && IsGroupStop(sig)) deliver = 0;
    Trace(PTRACE_DETACH, tid, 0, deliver);
    return true;
  });
  // Any left did not stop in time (in an uninterruptible wait): the kernel lets them go with us.
  for (auto& [tid, pid] : tasks_) Trace(PTRACE_DETACH, tid);
  tasks_.clear();
  processes_.clear();
  detach_at_stop_.clear();
}

}  // namespace ebpf_leak::process
