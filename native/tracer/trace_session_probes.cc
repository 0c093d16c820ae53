// TraceSession's uprobes on the allocator: one multi-uprobe link per file and direction, or one
// classic uprobe per function and direction, at attach and for a new image's allocator.
#include "tracer/trace_session.h"

#include <bpf/libbpf.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "abi/leak.h"
#include "leak.skel.h"
#include "tracer/uprobe_multi.h"
#include "unwind/unwinder.h"

namespace ebpf_leak {

namespace {

// The kernel's ENOTSUPP (not in user-space errno.h), returned for unsupported link types.
constexpr int ENOTSUPP_ERRNO = 524;

enum class Kind { kNone, kReturn, kEntry, kAfterCall };

// The probe `p` gets at its return (`ret`) or at its entry offset, if any.
Kind KindOf(const ProbeSpec& p, bool ret) {
  if (p.after_call) return ret ? Kind::kNone : Kind::kAfterCall;
  if (!ret) return Kind::kEntry;
  return p.entry_only || !HasReturnProbe(p.fn) ? Kind::kNone : Kind::kReturn;
}

}  // namespace

bool TraceSession::AttachLinks(const std::vector<ProbeSpec>& probes, bool multi, NativeError* error) {
  auto program_for = [&](Kind kind) {
    return kind == Kind::kReturn ? skel_->progs.alloc_exit
           : kind == Kind::kEntry ? skel_->progs.alloc_entry
                                  : skel_->progs.alloc_preloaded;
  };
  // Following forks, the links are for every process and the program keeps to the traced ones
  // (`traced_procs`): a link's pid filter does not follow a fork.
  int32_t pid = config_.follow_forks ? (multi ? 0 : -1) : config_.pid;
  auto attach_error = [&](int e, const ProbeSpec& p, bool ret) {
    char at[48];
    snprintf(at, sizeof at, " at offset 0x%llx",
             static_cast<unsigned long long>(ret ? p.return_offset : p.entry_offset));
    // EINVAL from a uprobe on a valid offset: another uprobe holds that spot with another
    // reference counter (the kernel logs "ref_ctr_offset mismatch").
    const char* code = e == EINVAL ? "ELEAK_PROBE_CONFLICT" : e == ENOENT ? "ELEAK_LIB_NOT_FOUND" : "ELEAK_BPF";
    *error = {CodeForErrno(e, code),
              std::string("cannot attach ") + (ret ? "uretprobes" : "uprobes") + " to " + p.path + at + ": " +
                  ErrnoText(e),
              e};
    return false;
  };
  if (multi) {
    // One link per file and kind of probe (in practice: one file, the allocator).
    std::map<std::string, std::vector<const ProbeSpec*>> by_path;
    for (const auto& p : probes) by_path[p.path].push_back(&p);
    for (const auto& [path, list] : by_path) {
      // Return probes first: a call already inside an allocator function when its entry probe
      // appears would otherwise leave its thread's `inflight` entry behind forever (no return
      // probe to take it), and that thread's allocations would all count as nested calls. A
      // return without an entry is skipped by the program. A probe after a call sees it whole.
      for (Kind kind : {Kind::kReturn, Kind::kEntry, Kind::kAfterCall}) {
        bool ret = kind == Kind::kReturn;
        std::vector<uint64_t> offsets, cookies;
        for (const ProbeSpec* p : list) {
          if (KindOf(*p, ret) != kind) continue;
          offsets.push_back(ret ? p->return_offset : p->entry_offset);
          cookies.push_back(ProbeCookie(*p));
        }
        if (offsets.empty()) continue;
        bpf_program* prog = program_for(kind);
        int fd = create_uprobe_multi_link(bpf_program__fd(prog), path.c_str(), offsets.data(),
                                          cookies.data(), static_cast<uint32_t>(offsets.size()),
                                          ret, pid);
        if (fd < 0) {
          int e = -fd;
          if (e == EINVAL || e == EOPNOTSUPP || e == ENOTSUPP_ERRNO) {
            *error = {"ELEAK_NO_MULTI", std::string("no multi-uprobe links: ") + ErrnoText(e), e};
            return false;
          }
          return attach_error(e, *list.front(), ret);
        }
        multi_links_.push_back(fd);
      }
    }
    return true;
  }
  for (const auto& probe : probes) {
    for (bool ret : {true, false}) {  // return probe first: see above
      Kind kind = KindOf(probe, ret);
      if (kind == Kind::kNone) continue;
      LIBBPF_OPTS(bpf_uprobe_opts, opts, .bpf_cookie = ProbeCookie(probe), .retprobe = ret);
      bpf_program* prog = program_for(kind);
      bpf_link* link = bpf_program__attach_uprobe_opts(
          prog, pid, probe.path.c_str(), ret ? probe.return_offset : probe.entry_offset, &opts);
      if (link == nullptr) return attach_error(errno, probe, ret);
      links_.push_back(link);
    }
  }
  return true;
}

// A new image's allocator, another file: its functions sit at other offsets within a page, so
// from now on the probes tell functions apart by their attach cookie.
bool TraceSession::DoAddProbes(const std::vector<ProbeSpec>& probes, NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!Attached(error)) return false;
  bool after_calls = std::any_of(probes.begin(), probes.end(), [](const ProbeSpec& p) { return p.after_call; });
  if (after_calls && !after_calls_) {
    *error = {"ELEAK_BPF", "probes after a preloaded call, but their program was not loaded: plan them with afterCalls false", EINVAL};
    return false;
  }
  skel_->bss->cookies_only = true;
  return AttachLinks(MarkOperatorReturns(probes), std::string(attach_mode_) == "uprobe_multi", error);
}

// The loader's _dl_debug_state() (bpf/leak.bpf.c's loader_changed). Without it a library's first
// stacks come before its table, as in a process not supervised. A multi-uprobe link where there
// are, closed with the others at once (each close waits for the kernel's RCU grace periods).
void TraceSession::AttachLoaderProbe(bool multi) {
  pid_t pid = config_.follow_forks ? (multi ? 0 : -1) : config_.pid;
  if (multi) {
    uint64_t offset = config_.loader_offset, cookie = 0;
    int fd = create_uprobe_multi_link(bpf_program__fd(skel_->progs.loader_changed), config_.loader_path.c_str(),
                                      &offset, &cookie, 1, false, pid);
    if (fd >= 0) multi_links_.push_back(fd);
    return;
  }
  LIBBPF_OPTS(bpf_uprobe_opts, opts);
  bpf_link* link = bpf_program__attach_uprobe_opts(skel_->progs.loader_changed, pid, config_.loader_path.c_str(),
                                                   config_.loader_offset, &opts);
  if (link != nullptr) links_.push_back(link);
}

bool TraceSession::DoLoadUnwindFiles(const std::vector<std::string>& paths, NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!Attached(error)) return false;
  if (unwind_) unwind_->LoadFiles(paths);
  return true;
}

}  // namespace ebpf_leak
