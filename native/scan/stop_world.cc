#include "scan/stop_world.h"
#include "addon/monotonic_clock.h"
#include "addon/native_error.h"

#include <dirent.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <elf.h>

namespace ebpf_leak {
namespace {

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
    iovec iov{&thread.regs, sizeof thread.regs};
    thread.has_regs = Ptrace(PTRACE_GETREGSET, t, NT_PRSTATUS, reinterpret_cast<unsigned long>(&iov)) == 0;
    world->threads.push_back(thread);
    resume->push_back(r);
  }
}

}  // namespace

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
    *error = std::string("cannot stop process ") + std::to_string(pid) + ": ptrace(PTRACE_SEIZE): " + ErrnoText(errno);
    return false;
  }
  HeldWorld world;
  world.pid = pid;
  std::vector<Resume> resume;
  StopThreads(&tids, &world, &resume);
  work(world);
  for (const Resume& r : resume)
    Ptrace(PTRACE_DETACH, r.tid, 0, static_cast<unsigned long>(r.request == PTRACE_CONT ? r.signal : 0));
  return true;
}

}  // namespace ebpf_leak
