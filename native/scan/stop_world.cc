#include "stop_world.h"

#include <dirent.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

namespace ebpf_leak {
namespace {

// Wakes the tracer thread out of waitid(): a signal of ours, sent to that thread only, with a
// handler that does nothing and no SA_RESTART. No other thread is ever sent it.
int WakeSignal() { return SIGRTMAX - 2; }

void InstallWakeHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sigaction(WakeSignal(), &sa, nullptr);
  });
}

uint64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

pid_t GetTid() { return static_cast<pid_t>(syscall(SYS_gettid)); }

long Ptrace(int request, pid_t tid, unsigned long addr, unsigned long data) {
  return ptrace(static_cast<__ptrace_request>(request), tid, reinterpret_cast<void*>(addr),
                reinterpret_cast<void*>(data));
}

std::vector<pid_t> ListThreads(pid_t pid) {
  std::vector<pid_t> out;
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    out.push_back(static_cast<pid_t>(atoi(e->d_name)));
  }
  closedir(d);
  return out;
}

// How a stopped thread goes on once the hold is over.
struct Resume {
  pid_t tid;
  int request;  // PTRACE_CONT or PTRACE_LISTEN
  int signal;   // delivered on PTRACE_CONT
};

// What kind of ptrace-stop a thread is in, from its siginfo.
struct StopKind {
  int event = 0;   // PTRACE_EVENT_*, 0 for a signal-delivery-stop
  int signal = 0;  // the signal being delivered, or the stop's signal
};

bool ReadStop(pid_t tid, StopKind* kind) {
  siginfo_t info{};
  if (Ptrace(PTRACE_GETSIGINFO, tid, 0, reinterpret_cast<unsigned long>(&info)) != 0) return false;
  // Event stops carry (event << 8) | signal in si_code; real signals' codes are all below 0x100.
  if (info.si_code > 0xff) {
    kind->event = info.si_code >> 8;
    kind->signal = info.si_code & 0xff;
  } else {
    kind->event = 0;
    kind->signal = info.si_signo;
  }
  return true;
}

// Waits for `tid`'s next ptrace-stop (never reaping it). False when it is gone.
bool WaitStop(pid_t tid) {
  for (;;) {
    siginfo_t si{};
    if (waitid(P_PID, static_cast<id_t>(tid), &si, WSTOPPED | __WALL | __WNOTHREAD) == 0) {
      if (si.si_pid == tid) return true;
      continue;
    }
    if (errno != EINTR) return false;
  }
}

// Longest wait for the threads exit_group() kills to reach their exit event.
constexpr int kExitWaitMs = 1000;

// Test-only: EBPF_LEAK_TEST_HOLD_DELAY_MS keeps the target held that much longer, so a test can
// kill the tracer in the middle of a hold.
void TestDelay() {
  const char* v = getenv("EBPF_LEAK_TEST_HOLD_DELAY_MS");
  if (v && *v) usleep(static_cast<useconds_t>(atoi(v)) * 1000);
}

// Stops the threads `tids` (attached, running or stopped): interrupts each and waits for each to
// stop, noting how it must go on. Threads it creates meanwhile are stopped too. Fills `world`.
void StopThreads(std::vector<pid_t>* tids, HeldWorld* world, std::vector<Resume>* resume) {
  // The pause counts from the first thread asked to stop.
  world->stopped_ns = MonotonicNs();
  for (pid_t t : *tids) Ptrace(PTRACE_INTERRUPT, t, 0, 0);
  for (size_t i = 0; i < tids->size(); i++) {
    pid_t t = (*tids)[i];
    if (!WaitStop(t)) continue;
    StopKind kind;
    if (!ReadStop(t, &kind)) continue;
    Resume r{t, PTRACE_CONT, 0};
    if (kind.event == 0) {
      r.signal = kind.signal;  // delivered when it goes on
    } else if (kind.event == PTRACE_EVENT_STOP && kind.signal != SIGTRAP) {
      r.request = PTRACE_LISTEN;  // in a group-stop: stays in it
    } else if (kind.event == PTRACE_EVENT_CLONE) {
      unsigned long child = 0;
      if (Ptrace(PTRACE_GETEVENTMSG, t, 0, reinterpret_cast<unsigned long>(&child)) == 0) {
        tids->push_back(static_cast<pid_t>(child));  // its first stop is on its way
      }
    }
    ScanThread thread;
    thread.tid = t;
    thread.has_regs = Ptrace(PTRACE_GETREGS, t, 0, reinterpret_cast<unsigned long>(&thread.regs)) == 0;
    world->threads.push_back(thread);
    resume->push_back(r);
  }
}

void ResumeThreads(const std::vector<Resume>& resume) {
  for (const Resume& r : resume) Ptrace(r.request, r.tid, 0, static_cast<unsigned long>(r.signal));
}

}  // namespace

std::unique_ptr<StopWorld> StopWorld::Follow(pid_t pid, HoldWork at_exit, std::string* error) {
  InstallWakeHandler();
  std::unique_ptr<StopWorld> w(new StopWorld());
  w->pid_ = pid;
  w->at_exit_ = std::move(at_exit);
  std::mutex started_mu;
  std::condition_variable started_cv;
  int started = 0;  // 1: following, -1: failed
  StopWorld* self = w.get();
  w->thread_ = std::thread([=, &started_mu, &started_cv, &started] {
    self->Loop(pid, error, &started_mu, &started_cv, &started);
  });
  std::unique_lock<std::mutex> lock(started_mu);
  started_cv.wait(lock, [&] { return started != 0; });
  if (started < 0) {
    lock.unlock();
    w->thread_.join();
    return nullptr;
  }
  return w;
}

StopWorld::~StopWorld() {
  detach_ = true;
  while (!done_) {
    Wake();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(20), [&] { return done_.load(); });
  }
  if (thread_.joinable()) thread_.join();
}

bool StopWorld::Wake() {
  pid_t t = thread_tid_;
  if (t == 0 || done_) return false;
  return syscall(SYS_tgkill, getpid(), t, WakeSignal()) == 0;
}

std::string StopWorld::not_held_reason() const {
  std::lock_guard<std::mutex> lock(const_cast<std::mutex&>(mu_));
  return not_held_;
}

bool StopWorld::Pause(HoldWork work) {
  std::unique_lock<std::mutex> lock(mu_);
  if (done_) return false;
  pause_work_ = std::move(work);
  pause_done_ = false;
  while (!pause_done_ && !done_) {
    lock.unlock();
    Wake();
    lock.lock();
    cv_.wait_for(lock, std::chrono::milliseconds(20), [&] { return pause_done_ || done_.load(); });
  }
  pause_work_ = nullptr;
  return pause_done_ && pause_ok_;
}

void StopWorld::RunPause() {
  HoldWork work;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!pause_work_ || pause_done_) return;
    work = pause_work_;
  }
  HeldWorld world;
  world.pid = pid_;
  std::vector<Resume> resume;
  std::vector<pid_t> tids = threads_;
  StopThreads(&tids, &world, &resume);
  for (pid_t t : tids)
    if (std::find(threads_.begin(), threads_.end(), t) == threads_.end()) threads_.push_back(t);
  bool ok = !world.threads.empty();
  if (ok) work(world);
  TestDelay();
  ResumeThreads(resume);
  std::lock_guard<std::mutex> lock(mu_);
  pause_ok_ = ok;
  pause_done_ = true;
  cv_.notify_all();
}

void StopWorld::OnExitEvent(pid_t tid) {
  ScanThread exiting;
  exiting.tid = tid;
  exiting.regs_are_roots = false;
  exiting.has_regs = Ptrace(PTRACE_GETREGS, tid, 0, reinterpret_cast<unsigned long>(&exiting.regs)) == 0;
  if (!exiting.has_regs || exit_held_) return;
  long nr = static_cast<long>(exiting.regs.orig_rax);
  // A thread's own exit() ends the process only when it is the last one.
  if (nr == SYS_exit_group || (nr == SYS_exit && ListThreads(pid_).size() <= 1)) {
    HoldExit(exiting);
  } else if (nr != SYS_exit) {
    // Killed (by exit_group() in another thread, exec, or a fatal signal), maybe before that
    // thread reached its own exit event: where its stack ended is kept for the hold.
    killed_.push_back(exiting);
  }
}

void StopWorld::HoldExit(const ScanThread& exiting) {
  const pid_t tid = exiting.tid;
  const uint64_t held_at = MonotonicNs();
  HeldWorld world;
  world.pid = pid_;
  world.threads.push_back(exiting);
  // The others are being killed by exit_group(), and each stops in its own exit event (the
  // kernel takes SIGKILL off a dying thread before it gets there): those that came first are in
  // killed_, the rest are held there too, so that each stack is read from its stack pointer. Their registers are not roots, as for valgrind, which
  // checks once every thread is gone.
  std::vector<pid_t> waiting, held;
  for (const ScanThread& k : killed_) world.threads.push_back(k);
  for (pid_t t : threads_) {
    bool gone = std::any_of(killed_.begin(), killed_.end(), [t](const ScanThread& k) { return k.tid == t; });
    if (t != tid && !gone) waiting.push_back(t);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kExitWaitMs);
  while (!waiting.empty() && std::chrono::steady_clock::now() < deadline) {
    for (size_t i = 0; i < waiting.size();) {
      pid_t t = waiting[i];
      siginfo_t si{};
      int r = waitid(P_PID, static_cast<id_t>(t), &si, WSTOPPED | WNOHANG | __WALL | __WNOTHREAD);
      if (r < 0 && errno != EINTR) {  // gone already
        waiting.erase(waiting.begin() + static_cast<long>(i));
        continue;
      }
      StopKind kind;
      if (r == 0 && si.si_pid == t && ReadStop(t, &kind)) {
        if (kind.event == PTRACE_EVENT_EXIT) {
          ScanThread dying;
          dying.tid = t;
          dying.regs_are_roots = false;
          dying.has_regs = Ptrace(PTRACE_GETREGS, t, 0, reinterpret_cast<unsigned long>(&dying.regs)) == 0;
          world.threads.push_back(dying);
          held.push_back(t);
          waiting.erase(waiting.begin() + static_cast<long>(i));
          continue;
        }
        Ptrace(PTRACE_CONT, t, 0, 0);  // on its way to its exit event
      }
      i++;
    }
    if (!waiting.empty()) usleep(100);
  }
  for (pid_t t : waiting) world.threads.push_back(ScanThread{t, false, false, {}});
  world.stopped_ns = held_at;
  at_exit_(world);
  exit_held_ = true;
  TestDelay();
  for (pid_t t : held) Ptrace(PTRACE_CONT, t, 0, 0);
}

void StopWorld::Loop(pid_t pid, std::string* error, std::mutex* started_mu, std::condition_variable* started_cv,
                     int* started) {
  pthread_setname_np(pthread_self(), "ebpf-leak-stop");
  thread_tid_ = GetTid();
  sigset_t wake;
  sigemptyset(&wake);
  sigaddset(&wake, WakeSignal());
  pthread_sigmask(SIG_UNBLOCK, &wake, nullptr);
  const unsigned long options = PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXIT | PTRACE_O_TRACEEXEC;
  {
    std::lock_guard<std::mutex> lock(*started_mu);
    std::vector<pid_t> tids = ListThreads(pid);
    if (tids.empty()) tids.push_back(pid);
    for (pid_t t : tids) {
      if (Ptrace(PTRACE_SEIZE, t, 0, options) == 0) {
        threads_.push_back(t);
      } else if (t == pid) {
        *error = std::string("ptrace(PTRACE_SEIZE) of process ") + std::to_string(pid) + ": " + strerror(errno);
        *started = -1;
        started_cv->notify_all();
        done_ = true;
        return;
      }
    }
    *started = 1;
    started_cv->notify_all();
  }

  for (;;) {
    if (detach_) {
      // Stopped threads first, so that each can be detached.
      HeldWorld world;
      std::vector<Resume> resume;
      std::vector<pid_t> tids = threads_;
      StopThreads(&tids, &world, &resume);
      for (const Resume& r : resume)
        Ptrace(PTRACE_DETACH, r.tid, 0, static_cast<unsigned long>(r.request == PTRACE_CONT ? r.signal : 0));
      break;
    }
    RunPause();
    siginfo_t si{};
    if (waitid(P_ALL, 0, &si, WEXITED | WSTOPPED | __WALL | __WNOTHREAD | WNOWAIT) != 0) {
      if (errno == EINTR) continue;
      // ECHILD: its parent reaped it first.
      std::lock_guard<std::mutex> lock(mu_);
      if (!exit_held_ && not_held_.empty()) not_held_ = "it ended without passing the exit hold";
      break;
    }
    pid_t tid = si.si_pid;
    if (si.si_code == CLD_EXITED || si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED) {
      if (tid == pid_) {
        // The process is over: its parent reaps it, not us.
        if (!exit_held_) {
          std::lock_guard<std::mutex> lock(mu_);
          if (si.si_code == CLD_EXITED)
            not_held_ = "it exited without passing the exit hold";
          else
            not_held_ = std::string("killed by signal ") + (sigabbrev_np(si.si_status) ? "SIG" : "") +
                        (sigabbrev_np(si.si_status) ? sigabbrev_np(si.si_status) : std::to_string(si.si_status));
        }
        break;
      }
      siginfo_t ignored{};
      while (waitid(P_PID, static_cast<id_t>(tid), &ignored, WEXITED | __WALL | __WNOTHREAD) != 0 && errno == EINTR) {
      }
      threads_.erase(std::remove(threads_.begin(), threads_.end(), tid), threads_.end());
      continue;
    }
    if (!WaitStop(tid)) continue;
    StopKind kind;
    if (!ReadStop(tid, &kind)) continue;
    int request = PTRACE_CONT, signal = 0;
    switch (kind.event) {
      case 0:
        signal = kind.signal;  // a signal for the program: delivered as it was
        break;
      case PTRACE_EVENT_CLONE: {
        unsigned long child = 0;
        if (Ptrace(PTRACE_GETEVENTMSG, tid, 0, reinterpret_cast<unsigned long>(&child)) == 0)
          threads_.push_back(static_cast<pid_t>(child));
        break;
      }
      case PTRACE_EVENT_EXEC:
        threads_.assign(1, pid_);  // exec leaves one thread, with the process's id
        killed_.clear();
        break;
      case PTRACE_EVENT_EXIT:
        OnExitEvent(tid);
        break;
      case PTRACE_EVENT_STOP:
        if (kind.signal != SIGTRAP) request = PTRACE_LISTEN;  // a group-stop stays one
        break;
      default:
        break;
    }
    Ptrace(request, tid, 0, static_cast<unsigned long>(signal));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    cv_.notify_all();
  }
}

bool StopOnce(pid_t pid, const HoldWork& work, std::string* error) {
  std::vector<pid_t> tids;
  // Threads may be created while we attach: list again until no new one appears.
  for (int round = 0; round < 100; round++) {
    bool added = false;
    for (pid_t t : ListThreads(pid)) {
      if (std::find(tids.begin(), tids.end(), t) != tids.end()) continue;
      if (Ptrace(PTRACE_SEIZE, t, 0, PTRACE_O_TRACECLONE) == 0) {
        tids.push_back(t);
        added = true;
      }
    }
    if (!added) break;
  }
  if (tids.empty()) {
    *error = std::string("cannot stop process ") + std::to_string(pid) + ": ptrace(PTRACE_SEIZE): " + strerror(errno);
    return false;
  }
  HeldWorld world;
  world.pid = pid;
  std::vector<Resume> resume;
  StopThreads(&tids, &world, &resume);
  work(world);
  TestDelay();
  for (const Resume& r : resume)
    Ptrace(PTRACE_DETACH, r.tid, 0, static_cast<unsigned long>(r.request == PTRACE_CONT ? r.signal : 0));
  return true;
}

}  // namespace ebpf_leak
