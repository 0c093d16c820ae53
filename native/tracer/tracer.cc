// One file by design: the Tracer ObjectWrap's load, attach, poll thread and snapshot share one lock and one BPF skeleton; processes and per-stack reads are tracer_processes.cc and tracer_stacks.cc.
#include "tracer/tracer.h"
#include "addon/errors.h"
#include "symbols/demangle.h"
#include "addon/queued_promise.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <sstream>

#include "addon/addon_data.h"
#include "addon/external_buffer.h"
#include "abi/leak.h"
#include "leak.skel.h"
#include "tracer/uprobe_multi.h"
#include "addon/monotonic_clock.h"

namespace ebpf_leak {

namespace {

// A batch is handed to JS when its slot (native/tracer/event_slots.h) is full, or when its oldest event
// is this old. 256 KB is ~4,700 events: at the fastest rates measured (~600,000 events a second)
// a slot fills every ~8 ms.
constexpr size_t kMaxBatchBytes = 256 << 10;
constexpr auto kMaxBatchAge = std::chrono::milliseconds(20);
// Events batches JS may hold, each until its listeners have had it (eventsDelivered()). With every
// slot in JS the poll thread stops draining: the ring buffer fills and the BPF side counts what it
// drops, rather than this process growing or the event loop having to deliver a backlog at once
// (4 MB, ~75,000 events, is a few tens of ms of delivery).
constexpr int kEventSlots = 16;
// OnRingRecord's answer when the slot is full: ring_buffer__consume stops (after that record).
constexpr int kSlotFull = -ENOBUFS;
constexpr auto kCounterCheckInterval = std::chrono::milliseconds(100);
// How often the poll thread wakes; also the resolution of blocks' timestamps (`now_ns` in
// bpf/leak.bpf.c: reading a clock in every allocation probe cost a tenth of its work).
constexpr int kClockTickMs = 10;

struct Message {
  const char* type;
  std::vector<uint8_t> bytes;
  int slot;  // >= 0: an events batch in that event slot, `length` bytes
  size_t length;
};

int CurrentTid() { return static_cast<int>(syscall(SYS_gettid)); }

// The kernel's ENOTSUPP (not in user-space errno.h), returned for unsupported link types.
constexpr int ENOTSUPP_ERRNO = 524;

// The config's fields are all given by lib/ (which owns every default and limit); a missing or
// mistyped one is a bug there, reported as such instead of replaced by a value of our own.
[[noreturn]] void MissingField(const Napi::Object& o, const char* key, const char* type) {
  throw Napi::TypeError::New(o.Env(), std::string("new Tracer(config): config.") + key + " must be " + type);
}
uint32_t GetUint(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) MissingField(o, key, "a number");
  return v.As<Napi::Number>().Uint32Value();
}
bool GetBool(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsBoolean()) MissingField(o, key, "a boolean");
  return v.As<Napi::Boolean>().Value();
}

}  // namespace

// Release functions have no return probe: they do all their work at the entry. operator delete
// has one: it releases at the entry and keeps its call in flight, so the free() inside it (and
// delete[] reaching delete) is known as part of it until it returns.
bool HasReturnProbe(uint32_t fn) {
  return fn != LEAK_FN_FREE && fn != LEAK_FN_SDALLOCX && fn != LEAK_FN_DALLOCX;
}

namespace {

uint64_t GetU64(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsBigInt()) {
    bool lossless = true;
    return v.As<Napi::BigInt>().Uint64Value(&lossless);
  }
  if (!v.IsNumber()) MissingField(o, key, "a number or a bigint");
  return static_cast<uint64_t>(v.As<Napi::Number>().DoubleValue());
}
std::vector<std::string> GetStrings(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsArray()) MissingField(o, key, "an array of strings");
  Napi::Array list = v.As<Napi::Array>();
  std::vector<std::string> out;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value item = list.Get(i);
    if (!item.IsString()) MissingField(o, key, "an array of strings");
    out.push_back(item.As<Napi::String>());
  }
  return out;
}
uint32_t UnwindModeOf(const Napi::Object& o) {
  Napi::Value v = o.Get("unwind");
  std::string m = v.IsString() ? std::string(v.As<Napi::String>()) : "";
  if (m == "fp") return LEAK_UNWIND_FP;
  if (m == "dwarf") return LEAK_UNWIND_DWARF;
  if (m == "auto") return LEAK_UNWIND_AUTO;
  MissingField(o, "unwind", "'auto', 'dwarf' or 'fp'");
}

// While alive, the calling thread's allocations are not recorded (when the tracer traces its own
// process). Wraps the worker-thread side of every native call, so a libuv worker that runs a
// snapshot is ignored for exactly that long and counts again when it runs the user's work.
class ThreadIgnore {
 public:
  explicit ThreadIgnore(Tracer* tracer) : tracer_(tracer), tid_(CurrentTid()) {
    tracer_->SetThreadIgnored(tid_, true);
  }
  ~ThreadIgnore() { tracer_->SetThreadIgnored(tid_, false); }
  ThreadIgnore(const ThreadIgnore&) = delete;
  ThreadIgnore& operator=(const ThreadIgnore&) = delete;

 private:
  Tracer* tracer_;
  int tid_;
};

// Base for the promise-returning calls: keeps the JS object alive while the worker runs and
// turns a NativeError into a JS error with its code.
class TracerWorker : public Napi::AsyncWorker {
 public:
  TracerWorker(Napi::Env env, Tracer* tracer, Napi::Object self)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), tracer_(tracer) {
    self_ = Napi::Persistent(self);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Fail(const NativeError& e) {
    error_ = e;
    SetError(e.message);
  }
  void OnError(const Napi::Error&) override { deferred_.Reject(ToJsError(Env(), error_).Value()); }

  Napi::Promise::Deferred deferred_;
  Tracer* tracer_;
  Napi::ObjectReference self_;
  NativeError error_;
};

class AttachWorker : public TracerWorker {
 public:
  using TracerWorker::TracerWorker;
  void Execute() override {
    NativeError e;
    if (!tracer_->DoAttach(&e)) Fail(e);
    // Gives the OS back the freed memory glibc keeps in its arenas (loading and verifying the BPF
    // object, V8's compiler zones), counted in RSS for the process's lifetime otherwise: about
    // 3 MB of the bench's tracer RSS with 1,000,000 blocks outstanding. Here, off the JS thread.
    malloc_trim(0);
  }
  void OnOK() override {
    Napi::Object result = Napi::Object::New(Env());
    result.Set("mode", tracer_->attach_mode());
    deferred_.Resolve(result);
  }
};

class SnapshotWorker : public TracerWorker {
 public:
  SnapshotWorker(Napi::Env env, Tracer* tracer, Napi::Object self, bool timestamps)
      : TracerWorker(env, tracer, self), timestamps_(timestamps) {}
  void Execute() override {
    NativeError e;
    if (!tracer_->DoSnapshot(timestamps_, &entries_, &counters_, &e)) Fail(e);
    now_ns_ = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object result = Napi::Object::New(env);
    Napi::ArrayBuffer counters = Napi::ArrayBuffer::New(env, counters_.size());
    if (!counters_.empty()) memcpy(counters.Data(), counters_.data(), counters_.size());
    result.Set("entries", entries_.TakeAsArrayBuffer(env));
    result.Set("counters", counters);
    // bpf_ktime_get_ns() and steady_clock are both CLOCK_MONOTONIC on Linux.
    result.Set("nowNs", Napi::BigInt::New(env, now_ns_));
    deferred_.Resolve(result);
  }

 private:
  bool timestamps_;
  PageBuffer entries_;
  std::vector<uint8_t> counters_;
  uint64_t now_ns_ = 0;
};

class ScanWorker : public TracerWorker {
 public:
  ScanWorker(Napi::Env env, Tracer* tracer, Napi::Object self, pid_t pid)
      : TracerWorker(env, tracer, self), pid_(pid) {}
  void Execute() override {
    NativeError e;
    if (!tracer_->DoScan(pid_, &outcome_, &e)) Fail(e);
  }
  void OnOK() override { deferred_.Resolve(outcome_.ToJs(Env())); }

 private:
  pid_t pid_;
  ScanOutcome outcome_;
};

// close() off the JS thread: closing a uprobe link waits for other CPUs to leave its probes
// (~30-40 ms a link), which would stall the event loop.
class CloseWorker : public TracerWorker {
 public:
  using TracerWorker::TracerWorker;
  void Execute() override { tracer_->Close(); }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
};

class ReadModulesWorker : public TracerWorker {
 public:
  using TracerWorker::TracerWorker;
  void Execute() override {
    NativeError e;
    if (!tracer_->DoReadModules(&modules_, &e)) Fail(e);
  }
  void OnOK() override {
    deferred_.Resolve(TakeAsArrayBuffer(Env(), std::move(modules_)));
  }

 private:
  std::vector<uint8_t> modules_;
};

class ReadHeapErrorsWorker : public TracerWorker {
 public:
  using TracerWorker::TracerWorker;
  void Execute() override {
    NativeError e;
    if (!tracer_->DoReadHeapErrors(&errors_, &e)) Fail(e);
  }
  void OnOK() override {
    deferred_.Resolve(TakeAsArrayBuffer(Env(), std::move(errors_)));
  }

 private:
  std::vector<uint8_t> errors_;
};

class ReadStacksWorker : public TracerWorker {
 public:
  ReadStacksWorker(Napi::Env env, Tracer* tracer, Napi::Object self, std::vector<int64_t> ids)
      : TracerWorker(env, tracer, self), ids_(std::move(ids)) {}
  void Execute() override {
    NativeError e;
    if (!tracer_->DoReadStacks(ids_, &stacks_, &e)) Fail(e);
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Array result = Napi::Array::New(env, stacks_.size());
    for (size_t i = 0; i < stacks_.size(); i++) {
      Napi::BigUint64Array frames = Napi::BigUint64Array::New(env, stacks_[i].size());
      for (size_t j = 0; j < stacks_[i].size(); j++) frames[j] = stacks_[i][j];
      result.Set(i, frames);
    }
    deferred_.Resolve(result);
  }

 private:
  std::vector<int64_t> ids_;
  std::vector<std::vector<uint64_t>> stacks_;
};

}  // namespace

Napi::Function Tracer::Define(Napi::Env env) {
  return DefineClass(env, "Tracer",
                     {
                         InstanceMethod<&Tracer::Attach>("attach"),
                         InstanceMethod<&Tracer::Snapshot>("snapshot"),
                         InstanceMethod<&Tracer::Scan>("scan"),
                         InstanceMethod<&Tracer::TakeExitScan>("takeExitScan"),
                         InstanceMethod<&Tracer::ReadStacks>("readStacks"),
                         InstanceMethod<&Tracer::ReadModules>("readModules"),
                         InstanceMethod<&Tracer::ReadHeapErrors>("readHeapErrors"),
                         InstanceMethod<&Tracer::Counters>("counters"),
                         InstanceMethod<&Tracer::SetMark>("setMark"),
                         InstanceMethod<&Tracer::ExitStatus>("exitStatus"),
                         InstanceMethod<&Tracer::EventsDelivered>("eventsDelivered"),
                         InstanceMethod<&Tracer::EventSlotsJs>("eventSlots"),
                         InstanceMethod<&Tracer::CloseJs>("close"),
                         InstanceMethod<&Tracer::CloseAsync>("closeAsync"),
                         StaticMethod<&Tracer::Demangle>("demangle"),
                         InstanceMethod<&Tracer::ReadStackTotals>("readStackTotals"),
                         InstanceMethod<&Tracer::UnwindStats>("unwindStats"),
                         InstanceMethod<&Tracer::ResumeProcess>("resumeProcess"),
                         InstanceMethod<&Tracer::AddProbes>("addProbes"),
                         InstanceMethod<&Tracer::ProcessStats>("processStats"),
                         InstanceMethod<&Tracer::ProcessCounters>("processCounters"),
                     });
}

// new Tracer(config, onMessage): validation happened in lib/; this only copies the fields.
Tracer::Tracer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Tracer>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction())
    throw Napi::TypeError::New(env, "new Tracer(config: object, onMessage: function)");
  Napi::Object o = info[0].As<Napi::Object>();
  config_.pid = static_cast<int32_t>(GetUint(o, "pid"));
  config_.wait_for_exec = GetBool(o, "waitForExec");
  config_.classic_uprobes = GetBool(o, "classicUprobes");
  config_.max_allocations = GetUint(o, "maxAllocations");
  config_.events = GetBool(o, "events");
  config_.event_buffer_bytes = GetUint(o, "eventBufferBytes");
  config_.stacks = GetBool(o, "stacks");
  config_.stack_depth = GetUint(o, "stackDepth");
  config_.stack_map_entries = GetUint(o, "stackMapEntries");
  config_.page_size = GetUint(o, "pageSize");
  config_.sample_every_bytes = GetU64(o, "sampleEveryBytes");
  config_.ignore_own_threads = GetBool(o, "ignoreOwnThreads");
  config_.unwind.mode = UnwindModeOf(o);
  config_.unwind.files = GetStrings(o, "unwindFiles");
  config_.unwind.table_rows = GetUint(o, "unwindTableRows");
  config_.unwind.stack_totals = GetBool(o, "stackTotals");
  config_.heap_errors = GetBool(o, "heapErrors");
  config_.freed_blocks = GetUint(o, "freedBlocks");
  config_.allocator_inode = GetU64(o, "allocatorInode");
  config_.supervise = GetBool(o, "supervise");
  config_.follow_forks = config_.supervise && GetBool(o, "followForks");
  config_.scan_at_exit = GetBool(o, "scanAtExit") && (config_.supervise || !config_.wait_for_exec);
  config_.hold_exit = config_.scan_at_exit && !config_.supervise;
  if (config_.hold_exit && o.Get("holdRefused").IsString()) {
    config_.hold_exit = false;
    hold_error_ = o.Get("holdRefused").ToString().Utf8Value();
  }
  config_.glibc = GetBool(o, "glibc");
  config_.image_keys = !config_.supervise && !config_.wait_for_exec;
  Napi::Value btf = o.Get("btfPath");
  if (btf.IsString()) config_.btf_path = btf.As<Napi::String>();
  Napi::Value probes = o.Get("probes");
  if (probes.IsArray()) {
    Napi::Array list = probes.As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Object p = list.Get(i).As<Napi::Object>();
      ProbeSpec spec;
      spec.fn = GetUint(p, "fn");
      spec.path = p.Get("path").ToString();
      spec.entry_offset = GetU64(p, "entryOffset");
      spec.return_offset = GetU64(p, "returnOffset");
      config_.probes.push_back(std::move(spec));
    }
  }
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (config_.events) event_slots_.Create(env, kEventSlots, kMaxBatchBytes);
  on_message_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "ebpf-leak poll",
                                              0, 1);
  addon_data_ = AddonData::From(env);
  addon_data_->tracers.insert(this);
}

// ObjectWrap finalizers run before the env's instance data is freed, so addon_data_ is valid.
Tracer::~Tracer() {
  Close();
  event_slots_.Reset();
  addon_data_->tracers.erase(this);
}

// fn_at_page_offset (bpf/leak.bpf.c): 1 + the function of the entry probe at each offset within a
// page; 0 where two functions' probes share one (those ask the attach cookie).
void Tracer::SetProbeFunctions(volatile uint8_t* by_offset, const std::vector<ProbeSpec>& probes) {
  constexpr uint8_t kShared = 0xff;
  uint8_t table[LEAK_PAGE_OFFSETS] = {};
  for (const auto& p : probes) {
    uint8_t& slot = table[p.entry_offset & (LEAK_PAGE_OFFSETS - 1)];
    slot = slot == 0 || slot == p.fn + 1 ? static_cast<uint8_t>(p.fn + 1) : kShared;
  }
  for (size_t i = 0; i < LEAK_PAGE_OFFSETS; i++) by_offset[i] = table[i] == kShared ? 0 : table[i];
}

bool Tracer::DoAttach(NativeError* error) {
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

ScanSession* Tracer::Session() {
  std::lock_guard<std::mutex> lock(scan_mu_);
  if (!scan_) {
    ScanOptions options;
    options.glibc = config_.glibc;
    scan_ = std::make_unique<ScanSession>(config_.pid, options, [this](PageBuffer* out) { return ReadBlocks(out); });
  }
  return scan_.get();
}

bool Tracer::ReadBlocks(PageBuffer* out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!allocs_table_.IsOpen()) return false;
  if (skel_ != nullptr) SyncImages();  // an image exec ended is not this one's
  return allocs_table_.Read(false, out) == 0;
}

bool Tracer::DoScan(pid_t pid, ScanOutcome* out, NativeError* error) {
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

void Tracer::SetThreadIgnored(int tid, bool ignored) {
  if (!config_.ignore_own_threads || skel_ == nullptr) return;
  int fd = bpf_map__fd(skel_->maps.ignored_tids);
  uint32_t key = static_cast<uint32_t>(tid);
  uint8_t one = 1;
  if (ignored)
    bpf_map_update_elem(fd, &key, &one, BPF_ANY);
  else
    bpf_map_delete_elem(fd, &key);
}

void Tracer::DetachAll() {
  unwind_.reset();  // its thread uses the maps
  allocs_table_.Close();
  for (int fd : multi_links_) close(fd);
  multi_links_.clear();
  for (auto* l : links_) bpf_link__destroy(l);
  links_.clear();
  if (ring_) ring_buffer__free(ring_);
  ring_ = nullptr;
  if (skel_) leak_bpf__destroy(skel_);
  skel_ = nullptr;
}

bool Tracer::LoadAndAttach(bool multi, NativeError* error) {
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
  skel_->rodata->allocator_inode = config_.allocator_inode;
  bpf_map__set_max_entries(skel_->maps.freed_blocks,
                           config_.heap_errors ? std::max<uint32_t>(config_.freed_blocks, 1) : 1);
  uint32_t buckets = AllocTableReader::BucketsFor(config_.max_allocations);
  bpf_map__set_max_entries(skel_->maps.allocs, buckets);
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
  skel_->rodata->attach_mode = multi ? LEAK_ATTACH_MULTI : LEAK_ATTACH_UPROBE;
  SetProbeFunctions(skel_->rodata->fn_at_page_offset, config_.probes);
  if (multi) {
    auto type = static_cast<bpf_attach_type>(LEAK_BPF_TRACE_UPROBE_MULTI);
    bpf_program__set_expected_attach_type(skel_->progs.alloc_entry, type);
    bpf_program__set_expected_attach_type(skel_->progs.alloc_exit, type);
  }

  unwind_ = Unwinder::Create(skel_, config_, this);  // tables and map sizes (native/unwind/unwinder.cc)
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
  if (int e = allocs_table_.Open(bpf_map__fd(skel_->maps.allocs), buckets,
                                   bpf_map__fd(skel_->maps.spilled_allocs), spill_entries))
    return fail("ELEAK_BPF", "cannot map the table of outstanding blocks", e);
  allocs_table_.StripProcessBits(config_.image_keys);
  SetThreadIgnored(CurrentTid(), true);  // until DoAttach is done: see there
  unwind_->Start();  // the unwind tables into the maps, before any probe fires

  if (!AttachLinks(config_.probes, multi, error)) {
    // Only libbpf's lines that say what failed (the rest is how the program loaded).
    std::string kept, tail = log.Tail();
    std::istringstream lines(tail);
    for (std::string line; std::getline(lines, line);)
      if (line.find("failed") != std::string::npos) kept += line + "\n";
    if (!kept.empty()) error->message += "\nlibbpf log:\n" + kept;
    DetachAll();
    return false;
  }
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
    ring_ = ring_buffer__new(bpf_map__fd(skel_->maps.events), &Tracer::OnRingRecord, this, nullptr);
    if (ring_ == nullptr) return fail("ELEAK_BPF", "cannot open the event ring buffer", errno);
  }
  attach_mode_ = multi ? "uprobe_multi" : "uprobe";
  return true;
}

bool Tracer::FinishAttach(NativeError* error) {
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
  poller_ = std::thread(&Tracer::PollLoop, this);
  return true;
}

bool Tracer::ReadCounters(std::vector<uint8_t>* out) {
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0 || skel_ == nullptr) return false;
  // struct leak_counters is all __u64: read the per-CPU copies as words, which is what they are
  // (summing through a cast struct pointer would break strict aliasing).
  constexpr size_t kWords = sizeof(leak_counters) / sizeof(uint64_t);
  std::vector<uint64_t> per_cpu(static_cast<size_t>(ncpu) * kWords);
  uint32_t key = 0;
  int fd = bpf_map__fd(skel_->maps.counters);
  if (config_.image_keys) {  // the current image's
    key = CurrentImage();
    fd = bpf_map__fd(skel_->maps.process_counters);
  }
  if (bpf_map_lookup_elem(fd, &key, per_cpu.data())) return false;
  std::vector<uint64_t> sum(kWords, 0);
  for (size_t cpu = 0; cpu < static_cast<size_t>(ncpu); cpu++)
    for (size_t i = 0; i < kWords; i++) sum[i] += per_cpu[cpu * kWords + i];
  out->resize(sizeof(leak_counters));
  memcpy(out->data(), sum.data(), sizeof(leak_counters));
  return true;
}

bool Tracer::DoSnapshot(bool timestamps, PageBuffer* entries, std::vector<uint8_t>* counters,
                        NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr) {
    *error = {"ELEAK_CLOSED", "the tracer is not attached", 0};
    return false;
  }
  ThreadIgnore ignore(this);
  SyncImages();
  // Counters first: a block allocated between the two reads then shows in the map but not yet
  // in the totals, never the other way round.
  if (!ReadCounters(counters)) {
    *error = {"ELEAK_BPF", "cannot read the counters map: " + ErrnoText(errno), errno};
    return false;
  }
  if (int e = allocs_table_.Read(timestamps, entries)) {
    *error = {"ELEAK_BPF", "cannot read the table of outstanding blocks: " + ErrnoText(e), e};
    return false;
  }
  return true;
}

// The heap errors recorded: the count seen (u64), then the leak_heap_error records that have a
// slot (the first LEAK_MAX_HEAP_ERRORS).
bool Tracer::DoReadHeapErrors(std::vector<uint8_t>* out, NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr) {
    *error = {"ELEAK_CLOSED", "the tracer is not attached", 0};
    return false;
  }
  ThreadIgnore ignore(this);
  uint64_t count = __atomic_load_n(&skel_->bss->heap_error_count, __ATOMIC_ACQUIRE);
  uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(count, LEAK_MAX_HEAP_ERRORS));
  out->resize(sizeof(uint64_t) + n * sizeof(leak_heap_error));
  memcpy(out->data(), &count, sizeof(count));
  int fd = bpf_map__fd(skel_->maps.heap_errors);
  for (uint32_t i = 0; i < n; i++) {
    if (bpf_map_lookup_elem(fd, &i, out->data() + sizeof(uint64_t) + i * sizeof(leak_heap_error))) {
      int e = errno;
      *error = {"ELEAK_BPF", "cannot read the heap errors: " + ErrnoText(e), e};
      return false;
    }
  }
  return true;
}

bool Tracer::DoReadModules(std::vector<uint8_t>* modules, NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr) {
    *error = {"ELEAK_CLOSED", "the tracer is not attached", 0};
    return false;
  }
  ThreadIgnore ignore(this);
  return DumpHashMap(bpf_map__fd(skel_->maps.modules), sizeof(uint64_t), sizeof(leak_module),
                     modules, error);
}

// Appends every key+value of a hash map to `out`, with batch lookups (a few system calls for a
// million entries). The map may change meanwhile; each bucket is read consistently.
bool Tracer::DumpHashMap(int fd, size_t key_size, size_t value_size, std::vector<uint8_t>* out,
                         NativeError* error) {
  uint32_t chunk = 16384;
  std::vector<uint8_t> keys, values;
  uint64_t in_token = 0, out_token = 0;
  bool first = true;
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  for (;;) {
    keys.resize(chunk * key_size);
    values.resize(chunk * value_size);
    uint32_t count = chunk;
    int err = bpf_map_lookup_batch(fd, first ? nullptr : &in_token, &out_token, keys.data(),
                                   values.data(), &count, &opts);
    int e = err ? errno : 0;
    if (e == ENOSPC && count == 0) {  // one hash bucket holds more than `chunk` entries
      chunk *= 2;
      continue;
    }
    size_t old = out->size();
    out->resize(old + count * (key_size + value_size));
    uint8_t* dst = out->data() + old;
    for (uint32_t i = 0; i < count; i++) {
      memcpy(dst, keys.data() + i * key_size, key_size);
      memcpy(dst + key_size, values.data() + i * value_size, value_size);
      dst += key_size + value_size;
    }
    if (e == ENOENT) return true;
    if (e) {
      *error = {"ELEAK_BPF", "cannot read a BPF map: " + ErrnoText(e), e};
      return false;
    }
    in_token = out_token;
    first = false;
  }
}

bool Tracer::DoReadStacks(const std::vector<int64_t>& ids,
                          std::vector<std::vector<uint64_t>>* stacks, NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr) {
    *error = {"ELEAK_CLOSED", "the tracer is not attached", 0};
    return false;
  }
  ThreadIgnore ignore(this);
  int fd = bpf_map__fd(skel_->maps.stack_traces);
  int overflow_fd = bpf_map__fd(skel_->maps.overflow_stacks);
  std::vector<uint64_t> buf(config_.stacks ? config_.stack_depth : 1);
  for (int64_t id : ids) {
    std::vector<uint64_t> frames;
    if (unwind_ && unwind_->ReadStack(id, &frames)) {  // a CFI-walked stack (bpf/unwind.bpf.h)
      stacks->push_back(std::move(frames));
      continue;
    }
    uint32_t key = static_cast<uint32_t>(id);
    uint64_t overflow_key = static_cast<uint64_t>(id);
    bool found = false;
    if (id >= 0 && (overflow_key & LEAK_OVERFLOW_STACK_TAG))
      found = bpf_map_lookup_elem(overflow_fd, &overflow_key, buf.data()) == 0;
    else if (id >= 0)
      found = bpf_map_lookup_elem(fd, &key, buf.data()) == 0;
    if (found) {
      for (uint64_t ip : buf) {
        if (ip == 0) break;
        frames.push_back(ip);
      }
    }
    stacks->push_back(std::move(frames));
  }
  return true;
}

int Tracer::OnRingRecord(void* self, void* data, size_t size) {
  auto* tracer = static_cast<Tracer*>(self);
  const auto* bytes = static_cast<const uint8_t*>(data);
  if (tracer->slot_ < 0) {
    tracer->overflow_.insert(tracer->overflow_.end(), bytes, bytes + size);
    return 0;
  }
  if (tracer->slot_used_ == 0) tracer->slot_started_ = std::chrono::steady_clock::now();
  // Every record is a struct leak_event, and a slot is never left with less room than one.
  size_t room = tracer->event_slots_.bytes() - tracer->slot_used_;
  size_t n = size < room ? size : room;
  memcpy(tracer->event_slots_.data(tracer->slot_) + tracer->slot_used_, bytes, n);
  tracer->slot_used_ += n;
  return room - n < sizeof(leak_event) ? kSlotFull : 0;
}

void Tracer::DrainRing(bool final) {
  for (;;) {
    if (slot_ < 0) slot_ = event_slots_.Acquire();
    if (slot_ < 0 && !final) return;  // JS has every slot: the rest waits in the ring buffer
    if (ring_buffer__consume(ring_) != kSlotFull) return;
    PostSlot();
  }
}

void Tracer::PostSlot() {
  if (slot_ < 0 || slot_used_ == 0) return;
  event_slots_.GiveToJs(slot_);
  Post("events", {}, slot_, slot_used_);
  slot_ = -1;
  slot_used_ = 0;
}

void Tracer::PostOverflow() {
  if (overflow_.empty()) return;
  Post("events", std::move(overflow_));
  overflow_.clear();
}

void Tracer::Post(const char* type, std::vector<uint8_t> bytes, int slot, size_t length) {
  if (slot < 0) length = bytes.size();
  auto* message = new Message{type, std::move(bytes), slot, length};
  // The callback may run after this Tracer is gone (a batch queued just before close): it holds
  // nothing of the tracer's. JS has its own references to the slots' ArrayBuffers.
  napi_status status =
      on_message_.NonBlockingCall(message, [](Napi::Env env, Napi::Function callback, Message* m) {
        std::unique_ptr<Message> owned(m);
        if (env == nullptr || callback.IsEmpty()) return;  // JS torn down
        Napi::Value data = owned->slot >= 0 ? env.Null() : Napi::Value(TakeAsArrayBuffer(env, std::move(owned->bytes)));
        try {
          callback.Call({Napi::String::New(env, owned->type), data, Napi::Number::New(env, static_cast<double>(owned->length)),
                         Napi::Number::New(env, owned->slot)});
        } catch (const Napi::Error& e) {
          e.ThrowAsJavaScriptException();
        }
      });
  if (status != napi_ok) {
    if (slot >= 0) event_slots_.Return(slot);
    delete message;
  }
}

// Drains the ring buffer in batches and watches the target's pidfd. Never touches JS: every
// result goes through the thread-safe function.
void Tracer::PollLoop() {
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

void Tracer::Close() {
  if (closed_.exchange(true)) return;
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
  if (!tsfn_released_) {
    tsfn_released_ = true;
    on_message_.Release();
  }
}

// scan(pid?): stops the target's threads (followForks: those of the traced process `pid`),
// scans, resumes => Promise<scan outcome>
Napi::Value Tracer::Scan(const Napi::CallbackInfo& info) {
  pid_t pid = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0;
  return QueueForPromise(new ScanWorker(info.Env(), this, info.This().As<Napi::Object>(), pid));
}

// takeExitScan() => the scan made at the target's exit, or { notScanned: reason }. Once the
// target is gone.
Napi::Value Tracer::TakeExitScan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::unique_ptr<ScanOutcome> outcome;
  std::string reason = "the exit scan is off";
  {
    std::lock_guard<std::mutex> lock(scan_mu_);
    if (scan_) {
      outcome = scan_->TakeExitOutcome();
      if (!outcome) reason = scan_->NotScannedReason();
    }
  }
  if (!outcome && !hold_error_.empty()) reason = "it could not be held at its exit: " + hold_error_;
  if (outcome) return outcome->ToJs(env);
  Napi::Object o = Napi::Object::New(env);
  o.Set("notScanned", reason);
  return o;
}

Napi::Value Tracer::Attach(const Napi::CallbackInfo& info) {
  return QueueForPromise(new AttachWorker(info.Env(), this, info.This().As<Napi::Object>()));
}

// snapshot(timestamps: boolean)
Napi::Value Tracer::Snapshot(const Napi::CallbackInfo& info) {
  bool timestamps = info.Length() > 0 && info[0].ToBoolean().Value();
  return QueueForPromise(new SnapshotWorker(info.Env(), this, info.This().As<Napi::Object>(), timestamps));
}

Napi::Value Tracer::ReadHeapErrors(const Napi::CallbackInfo& info) {
  return QueueForPromise(new ReadHeapErrorsWorker(info.Env(), this, info.This().As<Napi::Object>()));
}

Napi::Value Tracer::ReadModules(const Napi::CallbackInfo& info) {
  return QueueForPromise(new ReadModulesWorker(info.Env(), this, info.This().As<Napi::Object>()));
}

Napi::Value Tracer::ReadStacks(const Napi::CallbackInfo& info) {
  std::vector<int64_t> ids;
  if (info.Length() > 0 && info[0].IsArray()) {
    Napi::Array list = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++)
      ids.push_back(list.Get(i).As<Napi::Number>().Int64Value());
  }
  return QueueForPromise(new ReadStacksWorker(info.Env(), this, info.This().As<Napi::Object>(), std::move(ids)));
}

// Summed counters, synchronously: one small map read.
Napi::Value Tracer::Counters(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint8_t> counters;
  if (!ReadCounters(&counters)) return env.Null();
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, counters.size());
  memcpy(buffer.Data(), counters.data(), counters.size());
  return buffer;
}

// exitStatus(): the wait status recorded as an attached target's last thread exited, or null.
Napi::Value Tracer::ExitStatus(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr || !skel_->bss->exit_status_seen) return info.Env().Null();
  return Napi::Number::New(info.Env(), skel_->bss->exit_status);
}

Napi::Value Tracer::SetMark(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ != nullptr && info.Length() > 0 && info[0].IsNumber())
    skel_->bss->mark = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
  return info.Env().Undefined();
}

// Tracer.demangle(name): the C++ (Itanium ABI) demangling of a symbol name, or null when it is
// not a mangled name. For suppression rules written with mangled names, as valgrind writes them.
Napi::Value Tracer::Demangle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) return env.Null();
  std::string name = info[0].As<Napi::String>();
  std::optional<std::string> demangled = DemangleMangled(name.c_str());
  if (!demangled) return env.Null();
  return Napi::String::New(env, *demangled);
}

Napi::Value Tracer::CloseAsync(const Napi::CallbackInfo& info) {
  return QueueForPromise(new CloseWorker(info.Env(), this, info.This().As<Napi::Object>()));
}

// eventsDelivered(slot): the listeners have had the events batch in `slot` (or it was dropped
// unheard); it can be written again.
Napi::Value Tracer::EventsDelivered(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && info[0].IsNumber()) event_slots_.Return(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

// eventSlots(): the ArrayBuffers events batches arrive in, by slot; empty with events off.
Napi::Value Tracer::EventSlotsJs(const Napi::CallbackInfo& info) { return event_slots_.ToArray(info.Env()); }

Napi::Value Tracer::CloseJs(const Napi::CallbackInfo& info) {
  Close();
  return info.Env().Undefined();
}

}  // namespace ebpf_leak
