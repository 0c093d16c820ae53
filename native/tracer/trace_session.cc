// TraceSession's life: load and attach the BPF object, the poll thread that drains the event ring
// buffer and watches the target, and close. Reads of its maps are trace_session_reads.cc; the
// processes it follows, trace_session_processes.cc.
#include "tracer/trace_session.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <sstream>

#include "abi/leak.h"
#include "addon/monotonic_clock.h"
#include "leak.skel.h"
#include "scan/scan_session.h"
#include "tracer/event_slots.h"
#include "tracer/uprobe_multi.h"
#include "unwind/unwinder.h"

namespace ebpf_leak {

namespace {

// An events batch is handed to JS when its slot (native/tracer/event_slots.h) is full, or when its
// oldest event is this old.
constexpr auto kMaxBatchAge = std::chrono::milliseconds(20);
// OnRingRecord's answer when the slot is full: ring_buffer__consume stops (after that record).
constexpr int kSlotFull = -ENOBUFS;
constexpr auto kCounterCheckInterval = std::chrono::milliseconds(100);
// How often the poll thread wakes; also the resolution of blocks' timestamps (`now_ns` in
// bpf/leak.bpf.c: reading a clock in every allocation probe cost a tenth of its work).
constexpr int kClockTickMs = 10;

}  // namespace

int CurrentTid() { return static_cast<int>(syscall(SYS_gettid)); }

bool TraceSession::Attached(NativeError* error) const {
  if (skel_ != nullptr) return true;
  *error = {"ELEAK_CLOSED", "the tracer is not attached", 0};
  return false;
}

// Release functions have no return probe: they do all their work at the entry. operator delete
// has one: it releases at the entry and keeps its call in flight, so the free() inside it (and
// delete[] reaching delete) is known as part of it until it returns.
bool HasReturnProbe(uint32_t fn) {
  return fn != LEAK_FN_FREE && fn != LEAK_FN_SDALLOCX && fn != LEAK_FN_DALLOCX;
}

uint64_t ProbeCookie(const ProbeSpec& p) {
  uint64_t cookie = p.fn;
  if (p.entry_only) cookie |= LEAK_COOKIE_ENTRY_ONLY;
  cookie |= static_cast<uint64_t>(static_cast<uint32_t>(static_cast<int32_t>(p.call_return_delta)))
            << LEAK_COOKIE_DELTA_SHIFT;
  return cookie;
}

TraceSession::TraceSession(TracerConfig config, SessionOutput* output, EventSlots* event_slots)
    : config_(std::move(config)), output_(output), event_slots_(event_slots) {
  hold_error_ = config_.hold_refused;
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

TraceSession::~TraceSession() { Close(); }

// fn_at_page_offset (bpf/leak.bpf.c): 1 + the function of the entry probe at each offset within a
// page; 0 where two functions' probes share one (those ask the attach cookie).
void TraceSession::SetProbeFunctions(volatile uint8_t* by_offset, const std::vector<ProbeSpec>& probes) {
  constexpr uint8_t kShared = 0xff;
  uint8_t table[LEAK_PAGE_OFFSETS] = {};
  for (const auto& p : probes) {
    if (p.after_call) continue;  // its own program, which reads the cookie
    uint8_t& slot = table[p.entry_offset & (LEAK_PAGE_OFFSETS - 1)];
    slot = slot == 0 || slot == p.fn + 1 ? static_cast<uint8_t>(p.fn + 1) : kShared;
  }
  for (size_t i = 0; i < LEAK_PAGE_OFFSETS; i++) by_offset[i] = table[i] == kShared ? 0 : table[i];
}

// returns_into_operator (bpf/leak.bpf.c), at the offset within a page of each site where an
// operator new's allocation call returns: LEAK_RETURN_INTO_ENTRY_ONLY for an entry-only operator's,
// LEAK_RETURN_INTO_SITE + i for one known by its code (operator_sites[i]), which then needs no
// probe. A site's code goes in before its mark: the programs may be running (a new image's
// operators). Where two sites would share an offset the later keeps its probe; the program tries
// a thread's entry-only operator wherever a mark is, so that case needs no mark of its own.
std::vector<ProbeSpec> TraceSession::MarkOperatorReturns(const std::vector<ProbeSpec>& probes) {
  volatile uint8_t* by_offset = skel_->bss->returns_into_operator;
  std::vector<ProbeSpec> linked;
  for (const auto& p : probes) {
    if (!p.entry_only || p.call_return_delta == 0) {
      linked.push_back(p);
      continue;
    }
    size_t at = (p.entry_offset + p.call_return_delta) & (LEAK_PAGE_OFFSETS - 1);
    if (!p.site_code.empty() && p.site_code.size() <= LEAK_OPERATOR_SITE_CODE) {
      leak_operator_site want = {};
      memcpy(want.code, p.site_code.data(), p.site_code.size());
      want.len = static_cast<uint32_t>(p.site_code.size());
      want.return_at = p.site_return_at;
      want.sp_delta = p.site_sp_delta;
      want.zero_as_one = p.site_zero_as_one ? 1 : 0;
      want.insn_starts = p.site_insn_starts;
      int slot = -1;
      for (int i = 0; i < LEAK_MAX_OPERATOR_SITES && slot < 0; i++) {
        auto* s = &skel_->bss->operator_sites[i];
        if (s->len == 0 || memcmp(s, &want, sizeof want) == 0) slot = i;
      }
      uint8_t mark = slot < 0 ? 0 : static_cast<uint8_t>(LEAK_RETURN_INTO_SITE + slot);
      if (slot >= 0 && (by_offset[at] == 0 || by_offset[at] == LEAK_RETURN_INTO_ENTRY_ONLY || by_offset[at] == mark)) {
        memcpy(&skel_->bss->operator_sites[slot], &want, sizeof want);
        std::atomic_thread_fence(std::memory_order_release);
        by_offset[at] = mark;
        continue;
      }
    }
    if (by_offset[at] == 0) by_offset[at] = LEAK_RETURN_INTO_ENTRY_ONLY;
    linked.push_back(p);
  }
  return linked;
}

bool TraceSession::DoAttach(NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) {
    *error = {"ELEAK_CLOSED", "the tracer was closed before it attached", 0};
    return false;
  }
  if (skel_ != nullptr) {
    *error = {"ELEAK_STATE", "attach() was already called", 0};
    return false;
  }
  // Multi-uprobe links first; a kernel without them (< 6.6) rejects the link and we reload the
  // program for one classic uprobe per function.
  bool ok = LoadAndAttach(!config_.classic_uprobes, error);
  if (!ok && error->code == "ELEAK_NO_MULTI") ok = LoadAndAttach(false, error);
  if (ok) ok = FinishAttach(error);
  // LoadAndAttach ignored this thread from the moment the program was loaded (its libbpf link
  // objects and the poll thread's start are the tracer's); from now on it may run user work.
  if (ok) SetThreadIgnored(CurrentTid(), false);
  return ok;
}

ScanSession* TraceSession::Session() {
  std::lock_guard<std::mutex> lock(scan_mu_);
  if (!scan_) {
    ScanOptions options;
    options.glibc = config_.glibc;
    scan_ = std::make_unique<ScanSession>(config_.pid, options, [this](PageBuffer* out) { return ReadBlocks(out); });
  }
  return scan_.get();
}

bool TraceSession::ReadBlocks(PageBuffer* out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!allocs_table_.IsOpen()) return false;
  if (skel_ != nullptr) SyncImages();  // an image exec ended is not this one's
  return allocs_table_.Read(false, out) == 0;
}

bool TraceSession::DoScan(pid_t pid, ScanOutcome* out, NativeError* error) {
  if (config_.pid == getpid()) {
    *error = {"ELEAK_SCAN", "a process cannot stop itself to be scanned", 0};
    return false;
  }
  if (config_.follow_forks) return ScanFollowed(pid == 0 ? config_.pid : pid, out, error);
  std::string why;
  if (!Session()->ScanNow(supervisor_.get(), out, &why)) {
    *error = {"ELEAK_SCAN", "cannot scan process " + std::to_string(config_.pid) + ": " + why, 0};
    return false;
  }
  return true;
}

void TraceSession::SetThreadIgnored(int tid, bool ignored) {
  if (!config_.ignore_own_threads || skel_ == nullptr) return;
  int fd = bpf_map__fd(skel_->maps.ignored_tids);
  uint32_t key = static_cast<uint32_t>(tid);
  uint8_t one = 1;
  if (ignored)
    bpf_map_update_elem(fd, &key, &one, BPF_ANY);
  else
    bpf_map_delete_elem(fd, &key);
}

namespace {

void* CloseLink(void* fd) {
  close(static_cast<int>(reinterpret_cast<intptr_t>(fd)));
  return nullptr;
}

// Closing a multi-uprobe link waits for the kernel's RCU grace periods (uprobe_unregister_sync():
// 25-50 ms each here), so links closed one after another wait one after another: 160 ms at the
// end of a C++ program's run, whose allocator and C++ runtime have two links each. Closed at once,
// from a thread each, they share the waits. The threads call nothing that allocates: a traced
// process (measure() traces its own) sees no call of theirs.
void CloseLinksAtOnce(const std::vector<int>& fds) {
  std::vector<pthread_t> threads;
  for (size_t i = 1; i < fds.size(); i++) {
    pthread_t t;
    if (pthread_create(&t, nullptr, CloseLink, reinterpret_cast<void*>(static_cast<intptr_t>(fds[i]))) == 0)
      threads.push_back(t);
    else
      close(fds[i]);
  }
  if (!fds.empty()) close(fds[0]);
  for (pthread_t t : threads) pthread_join(t, nullptr);
}

}  // namespace

void TraceSession::DetachAll() {
  unwind_.reset();  // its thread uses the maps
  allocs_table_.Close();
  CloseLinksAtOnce(multi_links_);
  multi_links_.clear();
  for (auto* l : links_) bpf_link__destroy(l);
  links_.clear();
  if (ring_) ring_buffer__free(ring_);
  ring_ = nullptr;
  if (skel_) leak_bpf__destroy(skel_);
  skel_ = nullptr;
}

bool TraceSession::LoadAndAttach(bool multi, NativeError* error) {
  LibbpfLogCapture log;
  auto fail = [&](const std::string& code, const std::string& what, int err) {
    std::string message = what;
    if (err) message += ": " + ErrnoText(err);
    std::string tail = log.Tail();
    if (!tail.empty()) message += "\nlibbpf log:\n" + tail;
    *error = {code, message, err};
    DetachAll();
    return false;
  };

  LIBBPF_OPTS(bpf_object_open_opts, open_opts);
  if (!config_.btf_path.empty()) open_opts.btf_custom_path = config_.btf_path.c_str();
  skel_ = leak_bpf__open_opts(&open_opts);
  if (skel_ == nullptr) return fail("ELEAK_BPF", "cannot open the BPF object", errno);

  skel_->rodata->target_tgid = static_cast<uint32_t>(config_.pid);
  skel_->rodata->wait_for_exec = config_.wait_for_exec;
  skel_->rodata->emit_events = config_.events;
  skel_->rodata->wakeup_bytes = config_.event_buffer_bytes / 8;
  skel_->rodata->sample_mean_bytes = config_.sample_every_bytes;
  skel_->rodata->capture_stacks = config_.stacks;
  skel_->rodata->page_size = config_.page_size;
  skel_->rodata->filter_threads = config_.ignore_own_threads;
  skel_->rodata->stack_depth = config_.stack_depth;
  skel_->rodata->report_heap_errors = config_.heap_errors;
  skel_->rodata->keep_release_stacks = config_.release_stacks;
  skel_->rodata->allocator_inode = config_.allocator_inode;
  uint32_t freed_sets =
      config_.heap_errors ? (std::max<uint32_t>(config_.freed_blocks, 1) + LEAK_FREED_WAYS - 1) / LEAK_FREED_WAYS : 1;
  bpf_map__set_max_entries(skel_->maps.freed_blocks, freed_sets);
  skel_->rodata->freed_sets = freed_sets;
  uint32_t buckets = AllocTableReader::BucketsFor(config_.max_allocations);
  bpf_map__set_max_entries(skel_->maps.allocs, buckets);
  bpf_map__set_max_entries(skel_->maps.touched_groups, process::TableGroups::For(buckets));
  skel_->rodata->table_buckets = buckets;
  uint32_t spill_entries = AllocTableReader::SpillEntriesFor(config_.max_allocations);
  bpf_map__set_max_entries(skel_->maps.spilled_allocs, spill_entries);
  bpf_map__set_max_entries(skel_->maps.events, config_.events ? config_.event_buffer_bytes
                                                              : static_cast<uint32_t>(getpagesize()));
  uint32_t stack_entries = config_.stacks ? config_.stack_map_entries : 1;
  if (config_.stacks) {
    bpf_map__set_value_size(skel_->maps.stack_traces, config_.stack_depth * sizeof(uint64_t));
    bpf_map__set_value_size(skel_->maps.overflow_stacks, config_.stack_depth * sizeof(uint64_t));
  }
  bpf_map__set_max_entries(skel_->maps.stack_traces, stack_entries);
  bpf_map__set_max_entries(skel_->maps.overflow_stacks, stack_entries);
  bpf_map__set_max_entries(skel_->maps.stacks_seen, stack_entries);
  bpf_program__set_autoload(skel_->progs.target_exec, config_.wait_for_exec || config_.image_keys);
  bpf_program__set_autoload(skel_->progs.target_exit, !config_.wait_for_exec);
  // Only a preloaded malloc or calloc runs it, and verifying it takes a tenth of the start-up.
  after_calls_ = std::any_of(config_.probes.begin(), config_.probes.end(), [](const ProbeSpec& p) { return p.after_call; });
  bpf_program__set_autoload(skel_->progs.alloc_preloaded, after_calls_);
  skel_->rodata->attach_mode = multi ? LEAK_ATTACH_MULTI : LEAK_ATTACH_UPROBE;
  SetProbeFunctions(skel_->rodata->fn_at_page_offset, config_.probes);
  if (multi) {
    auto type = static_cast<bpf_attach_type>(LEAK_BPF_TRACE_UPROBE_MULTI);
    bpf_program__set_expected_attach_type(skel_->progs.alloc_entry, type);
    bpf_program__set_expected_attach_type(skel_->progs.alloc_exit, type);
    bpf_program__set_expected_attach_type(skel_->progs.alloc_preloaded, type);
    bpf_program__set_expected_attach_type(skel_->progs.loader_changed, type);
  }

  unwind_ = Unwinder::Create(skel_, config_, this);  // tables and map sizes (native/unwind/unwinder.cc)
  stop_at_loads_ = config_.supervise && !config_.loader_path.empty() && skel_->rodata->unwind_mode != LEAK_UNWIND_FP;
  skel_->rodata->stop_at_loads = stop_at_loads_;
  bpf_program__set_autoload(skel_->progs.loader_changed, stop_at_loads_);
  skel_->rodata->follow_forks = config_.follow_forks;
  skel_->rodata->image_keys = config_.image_keys;
  // Stack totals are one sum over every process; with several, blocks taken out at an exit or an
  // exec could not be taken out of them consistently.
  if (config_.follow_forks) skel_->rodata->keep_stack_totals = false;
  int err = leak_bpf__load(skel_);
  if (err) {
    int e = -err;
    if (multi && e == EINVAL) return fail("ELEAK_NO_MULTI", "no multi-uprobe programs", e);
    // EACCES from a load is the verifier's verdict, not a missing privilege.
    return fail(e == EPERM ? "ELEAK_PERM" : "ELEAK_BPF",
                e == EACCES ? "the kernel's verifier rejected the BPF program" : "cannot load the BPF program", e);
  }
  skel_->bss->now_ns = MonotonicNs();
  std::vector<ProbeSpec> linked = MarkOperatorReturns(config_.probes);
  if (int e = allocs_table_.Open(bpf_map__fd(skel_->maps.allocs), buckets, bpf_map__fd(skel_->maps.touched_groups),
                                   bpf_map__fd(skel_->maps.spilled_allocs), spill_entries))
    return fail("ELEAK_BPF", "cannot map the table of outstanding blocks", e);
  allocs_table_.StripProcessBits(config_.image_keys);
  SetThreadIgnored(CurrentTid(), true);  // until DoAttach is done: see there
  unwind_->Start();  // the unwind tables into the maps, before any probe fires

  if (!AttachLinks(linked, multi, error)) {
    // Only libbpf's lines that say what failed (the rest is how the program loaded).
    std::string kept, tail = log.Tail();
    std::istringstream lines(tail);
    for (std::string line; std::getline(lines, line);)
      if (line.find("failed") != std::string::npos) kept += line + "\n";
    if (!kept.empty()) error->message += "\nlibbpf log:\n" + kept;
    DetachAll();
    return false;
  }
  if (stop_at_loads_) AttachLoaderProbe(multi);
  if (config_.wait_for_exec || config_.image_keys) {
    bpf_link* link = bpf_program__attach(skel_->progs.target_exec);
    if (link == nullptr)
      return fail(CodeForErrno(errno, "ELEAK_BPF"), "cannot attach to sched_process_exec", errno);
    links_.push_back(link);
  }
  if (!config_.wait_for_exec) {
    bpf_link* link = bpf_program__attach(skel_->progs.target_exit);
    if (link == nullptr)
      return fail(CodeForErrno(errno, "ELEAK_BPF"), "cannot attach to sched_process_exit", errno);
    links_.push_back(link);
    skel_->bss->armed = true;
  }
  if (config_.events) {
    ring_ = ring_buffer__new(bpf_map__fd(skel_->maps.events), &TraceSession::OnRingRecord, this, nullptr);
    if (ring_ == nullptr) return fail("ELEAK_BPF", "cannot open the event ring buffer", errno);
  }
  attach_mode_ = multi ? "uprobe_multi" : "uprobe";
  return true;
}

bool TraceSession::FinishAttach(NativeError* error) {
  if ((config_.supervise || config_.hold_exit) && !StartSupervisor(error)) {
    DetachAll();
    return false;
  }
  pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, config_.pid, 0));
  if (pidfd_ < 0) {
    int e = errno;
    *error = {e == ESRCH ? "ELEAK_TARGET_EXITED" : CodeForErrno(e, "ELEAK_BPF"),
              "cannot watch process " + std::to_string(config_.pid) + ": " + ErrnoText(e), e};
    DetachAll();
    return false;
  }
  poller_ = std::thread(&TraceSession::PollLoop, this);
  return true;
}

int TraceSession::OnRingRecord(void* self, void* data, size_t size) {
  auto* tracer = static_cast<TraceSession*>(self);
  const auto* bytes = static_cast<const uint8_t*>(data);
  if (tracer->slot_ < 0) {
    tracer->overflow_.insert(tracer->overflow_.end(), bytes, bytes + size);
    return 0;
  }
  if (tracer->slot_used_ == 0) tracer->slot_started_ = std::chrono::steady_clock::now();
  // Every record is a struct leak_event, and a slot is never left with less room than one.
  size_t room = tracer->event_slots_->bytes() - tracer->slot_used_;
  size_t n = size < room ? size : room;
  memcpy(tracer->event_slots_->data(tracer->slot_) + tracer->slot_used_, bytes, n);
  tracer->slot_used_ += n;
  return room - n < sizeof(leak_event) ? kSlotFull : 0;
}

void TraceSession::DrainRing(bool final) {
  for (;;) {
    if (slot_ < 0) slot_ = event_slots_->Acquire();
    if (slot_ < 0 && !final) return;  // JS has every slot: the rest waits in the ring buffer
    if (ring_buffer__consume(ring_) != kSlotFull) return;
    PostSlot();
  }
}

void TraceSession::PostSlot() {
  if (slot_ < 0 || slot_used_ == 0) return;
  event_slots_->GiveToJs(slot_);
  Post("events", {}, slot_, slot_used_);
  slot_ = -1;
  slot_used_ = 0;
}

void TraceSession::PostOverflow() {
  if (overflow_.empty()) return;
  Post("events", std::move(overflow_));
  overflow_.clear();
}

void TraceSession::Post(const char* type, std::vector<uint8_t> bytes, int slot, size_t length) {
  if (slot < 0) length = bytes.size();
  output_->Post(type, std::move(bytes), slot, length);
}

// Drains the ring buffer in batches and watches the target's pidfd. Every result goes out through
// output_.
void TraceSession::PollLoop() {
  // Named so it can be told apart in /proc/PID/task/*/comm; ignored for good when the tracer
  // traces its own process (its batches and messages are the tracer's allocations).
  pthread_setname_np(pthread_self(), "ebpf-leak-poll");
  SetThreadIgnored(CurrentTid(), true);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  auto watch = [ep](int fd, uint64_t tag) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  };
  enum : uint64_t { kStop = 1, kExit = 2, kRing = 3 };
  watch(stop_fd_, kStop);
  watch(pidfd_, kExit);
  if (ring_) watch(ring_buffer__epoll_fd(ring_), kRing);

  using Clock = std::chrono::steady_clock;
  Clock::time_point last_counter_check = Clock::now();
  uint64_t reported_lost = 0, reported_dropped = 0;
  bool stopping = false;
  while (!stopping) {
    epoll_event evs[4];
    // With events on, submits do not wake us until an eighth of the buffer waits: poll often.
    // Also the clock the probes stamp blocks with (`now_ns`) ticks here.
    int n = epoll_wait(ep, evs, 4, kClockTickMs);
    skel_->bss->now_ns = MonotonicNs();
    SyncImages();  // an exec's message before the exit's
    bool exited = false;
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u64 == kStop) stopping = true;
      if (evs[i].data.u64 == kExit) exited = true;
    }
    if (ring_) DrainRing(stopping || exited);
    Clock::time_point now = Clock::now();
    if (stopping || exited || (slot_used_ > 0 && now - slot_started_ >= kMaxBatchAge)) {
      PostSlot();
      PostOverflow();
    }
    if (now - last_counter_check >= kCounterCheckInterval || exited || stopping) {
      last_counter_check = now;
      std::vector<uint8_t> counters;
      if (ReadCounters(&counters)) {
        const auto* c = reinterpret_cast<const leak_counters*>(counters.data());
        if (c->lost_events != reported_lost || c->dropped_allocs != reported_dropped) {
          reported_lost = c->lost_events;
          reported_dropped = c->dropped_allocs;
          Post("counters", std::move(counters));
        }
      }
    }
    if (exited) {
      epoll_ctl(ep, EPOLL_CTL_DEL, pidfd_, nullptr);
      Post("exit", {});
    }
  }
  close(ep);
}

bool TraceSession::Close() {
  if (closed_.exchange(true)) return false;
  StopSupervisor();  // before mu_: its handlers take mu_
  std::lock_guard<std::mutex> lock(mu_);  // waits for a running attach or snapshot
  if (stop_fd_ >= 0) {
    uint64_t one = 1;
    ssize_t ignored = write(stop_fd_, &one, sizeof one);
    (void)ignored;
  }
  if (poller_.joinable()) poller_.join();
  DetachAll();
  if (pidfd_ >= 0) close(pidfd_);
  pidfd_ = -1;
  if (stop_fd_ >= 0) close(stop_fd_);
  stop_fd_ = -1;
  return true;
}

}  // namespace ebpf_leak
