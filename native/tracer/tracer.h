// One traced process: the BPF object, its uprobe links, and the thread that drains the event
// ring buffer and watches for the process to exit. JS sees it as `new Tracer(config, onMessage)`
// with attach() / snapshot() / readStacks() / counters() / setMark() / eventsDelivered() / close().
#pragma once

#include <napi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tracer/alloc_table_reader.h"
#include "addon/errors.h"
#include "tracer/event_slots.h"
#include "addon/page_buffer.h"
#include "process/supervisor.h"
#include "scan/scan_session.h"
#include "unwind/unwinder.h"

struct leak_bpf;
struct leak_counters;
struct bpf_link;
struct ring_buffer;

namespace ebpf_leak {

// Whether the allocator function `fn` (enum leak_fn) gets a return probe.
bool HasReturnProbe(uint32_t fn);

struct AddonData;

struct ProbeSpec {
  uint32_t fn = 0;             // enum leak_fn
  std::string path;            // file the offsets are in
  uint64_t entry_offset = 0;   // where the entry uprobe goes
  uint64_t return_offset = 0;  // function entry, for the uretprobe (not used for free)
};

// Every field comes from lib/ (lib/tracer/options.ts owns the defaults and limits).
struct TracerConfig {
  int32_t pid = 0;
  bool wait_for_exec = false;
  uint32_t max_allocations = 0;
  bool events = false;
  uint32_t event_buffer_bytes = 0;
  bool stacks = false;
  uint32_t stack_depth = 0;
  uint32_t stack_map_entries = 0;
  uint64_t page_size = 0;
  uint64_t sample_every_bytes = 0;  // 0: every allocation is recorded
  std::string btf_path;  // empty: the running kernel's
  std::vector<ProbeSpec> probes;
  // The target is this very process (a test harness measuring native code in-process), as lib/
  // decides: the tracer's own threads are then kept out of the results in the kernel (see
  // ThreadIgnore).
  bool ignore_own_threads = false;
  bool classic_uprobes = false;  // never multi-uprobe links (EBPF_LEAK_ATTACH=uprobe in lib/)
  // Run mode: every block was seen allocated, so releasing anything else is a heap error
  // (bpf/heap_errors.bpf.h), and released blocks are remembered to tell double frees.
  bool heap_errors = false;
  uint32_t freed_blocks = 65536;  // recently released blocks remembered
  uint64_t allocator_inode = 0;   // the allocator's file: its own frees are not errors
  // Follow the process with ptrace (native/process/): its exec()s start a new image's blocks and
  // wait for JS to check its allocator (resumeProcess()); its children are counted, or traced
  // each with blocks and counters of its own with `follow_forks`.
  bool supervise = false;
  bool follow_forks = false;
  // A running process not followed with ptrace: the BPF program starts a new image's blocks and
  // counters at each exec (bpf/traced_processes.bpf.h), and SyncImages() takes the old ones out.
  bool image_keys = false;
  UnwindOptions unwind;  // the CFI stack walker (native/unwind/unwinder.h)
  // Scan the target's memory for the leak kinds in the supervisor's stop at its exit.
  bool scan_at_exit = false;
  // scan_at_exit of a pid target not otherwise followed: a supervisor of its own only holds it at
  // its exit (its execs stay the BPF program's, image_keys). When ptrace is refused the trace
  // goes on without the hold, and hold_error_ says why.
  bool hold_exit = false;
  bool glibc = true;  // the probed allocator is glibc's (native/scan/heap_scan.h)
};

class Tracer : public Napi::ObjectWrap<Tracer>, public process::Handler {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Tracer(const Napi::CallbackInfo& info);
  ~Tracer() override;

  // Stops the poll thread, detaches every probe and frees the BPF object. Idempotent; called
  // from JS, from the destructor, and from the env cleanup hook.
  void Close();

  // Run on a worker thread by the AsyncWorkers below.
  bool DoAttach(NativeError* error);
  // "uprobe_multi" or "uprobe", once attached.
  const char* attach_mode() const { return attach_mode_; }
  // The outstanding blocks (leak_block records, leak_timed_block with `timestamps`) and the
  // counters.
  bool DoSnapshot(bool timestamps, PageBuffer* entries, std::vector<uint8_t>* counters,
                  NativeError* error);
  bool DoReadModules(std::vector<uint8_t>* modules, NativeError* error);
  bool DoReadHeapErrors(std::vector<uint8_t>* out, NativeError* error);
  bool DoReadStacks(const std::vector<int64_t>& ids, std::vector<std::vector<uint64_t>>* stacks,
                    NativeError* error);

  // Adds (or removes) a thread of this process to the BPF program's `ignored_tids`, so its
  // allocations are not recorded. A no-op unless config_.ignore_own_threads. Needs skel_: callers
  // hold mu_, or are the poll thread (which runs only while skel_ lives).
  void SetThreadIgnored(int tid, bool ignored);

  // process::Handler (native/tracer/tracer_processes.cc), on the supervisor's thread.
  bool OnEvent(const process::Event& event) override;
  bool DoAddProbes(const std::vector<ProbeSpec>& probes, NativeError* error);
  // Stops every thread of the target (followForks: of the traced process `pid`, 0 for the
  // first), scans its memory for the leak kinds, resumes it.
  bool DoScan(pid_t pid, ScanOutcome* out, NativeError* error);

 private:
  Napi::Value Attach(const Napi::CallbackInfo& info);
  Napi::Value Snapshot(const Napi::CallbackInfo& info);
  Napi::Value ReadStacks(const Napi::CallbackInfo& info);
  Napi::Value ReadModules(const Napi::CallbackInfo& info);
  Napi::Value ReadHeapErrors(const Napi::CallbackInfo& info);
  Napi::Value Counters(const Napi::CallbackInfo& info);
  Napi::Value SetMark(const Napi::CallbackInfo& info);
  Napi::Value ExitStatus(const Napi::CallbackInfo& info);
  Napi::Value EventsDelivered(const Napi::CallbackInfo& info);
  Napi::Value CloseJs(const Napi::CallbackInfo& info);
  Napi::Value CloseAsync(const Napi::CallbackInfo& info);
  Napi::Value Scan(const Napi::CallbackInfo& info);
  Napi::Value TakeExitScan(const Napi::CallbackInfo& info);
  bool ReadBlocks(PageBuffer* out);
  // followForks (native/tracer/tracer_processes.cc): the scan of one traced process, of its own
  // blocks, their addresses without its index.
  bool ScanFollowed(pid_t pid, ScanOutcome* out, NativeError* error);
  bool ReadProcessBlocks(pid_t pid, PageBuffer* out);
  ScanSession* Session();
  // Defined in native/unwind/unwinder.cc.
  Napi::Value ReadStackTotals(const Napi::CallbackInfo& info);
  Napi::Value UnwindStats(const Napi::CallbackInfo& info);
  static Napi::Value Demangle(const Napi::CallbackInfo& info);
  // Defined in native/tracer/tracer_processes.cc.
  Napi::Value ResumeProcess(const Napi::CallbackInfo& info);
  Napi::Value AddProbes(const Napi::CallbackInfo& info);
  Napi::Value ProcessStats(const Napi::CallbackInfo& info);
  Napi::Value ProcessCounters(const Napi::CallbackInfo& info);
  bool StartSupervisor(NativeError* error);
  void StopSupervisor();
  bool AttachLinks(const std::vector<ProbeSpec>& probes, bool multi, NativeError* error);
  uint64_t ProcessBits(pid_t pid);
  pid_t MemoryOwner(pid_t pid) const;
  void OwnMemory(pid_t pid);
  void ForgetFreedBlocks(uint64_t bits);
  bool ReadProcessCounters(uint32_t index, leak_counters* out);
  void WriteProcessCounters(uint32_t index, const leak_counters& value);
  void OnExec(const process::Event& event);
  bool OnFork(const process::Event& event);
  void OnExit(const process::Event& event);
  void WaitForResume(pid_t pid);
  // image_keys: the execs the BPF program saw since the last call, each posted as an "exec"
  // message with the blocks and counters of the image that ended, which leave the maps.
  void SyncImages();
  uint32_t CurrentImage() const;

  bool LoadAndAttach(bool multi, NativeError* error);
  static void SetProbeFunctions(volatile uint8_t* by_offset, const std::vector<ProbeSpec>& probes);
  bool FinishAttach(NativeError* error);
  void DetachAll();
  bool ReadCounters(std::vector<uint8_t>* out);
  static bool DumpHashMap(int fd, size_t key_size, size_t value_size, std::vector<uint8_t>* out,
                          NativeError* error);
  void PollLoop();
  // Drains the ring buffer into event slots while one is free; with `final` (stopping, or the
  // target gone) all of it, past the slots if it must. Poll thread.
  void DrainRing(bool final);
  void PostSlot();
  void PostOverflow();
  // `slot` >= 0: an events batch of `length` bytes in that slot, `bytes` unused.
  void Post(const char* type, std::vector<uint8_t> bytes, int slot = -1, size_t length = 0);
  static int OnRingRecord(void* self, void* data, size_t size);
  Napi::Value EventSlotsJs(const Napi::CallbackInfo& info);

  TracerConfig config_;
  AddonData* addon_data_ = nullptr;
  Napi::ThreadSafeFunction on_message_;
  bool tsfn_released_ = false;

  std::mutex mu_;  // held while the BPF object is used or torn down
  leak_bpf* skel_ = nullptr;
  std::vector<bpf_link*> links_;
  std::vector<int> multi_links_;  // fds of multi-uprobe links
  const char* attach_mode_ = "";
  ring_buffer* ring_ = nullptr;
  std::unique_ptr<Unwinder> unwind_;  // from load to DetachAll()
  AllocTableReader allocs_table_;     // reads `allocs`, from load to DetachAll()
  int pidfd_ = -1;
  int stop_fd_ = -1;
  std::thread poller_;
  std::atomic<bool> closed_{false};
  EventSlots event_slots_;  // made in the constructor when events are on
  // Poll thread only: the slot being filled (-1: none) and its bytes; and the final drain's
  // events when JS has every slot.
  int slot_ = -1;
  size_t slot_used_ = 0;
  std::chrono::steady_clock::time_point slot_started_;  // its first event's arrival
  std::vector<uint8_t> overflow_;

  // Processes (native/tracer/tracer_processes.cc). Indexes and execs: supervisor thread only.
  std::unique_ptr<process::Supervisor> supervisor_;
  std::map<pid_t, uint32_t> process_index_;  // traced process -> its index (follow_forks)
  std::vector<uint32_t> free_indexes_;
  // A process running in another's address space (a vfork child before its exec) -> the process
  // whose heap that is: its allocations and frees are keyed and counted as that one's.
  std::map<pid_t, pid_t> memory_owner_;
  uint32_t next_index_ = 1;
  std::atomic<uint64_t> lost_children_{0};  // not followed: no index left
  bool first_exec_seen_ = false;
  // resumeProcess() from JS ends the wait of an exec stop.
  std::mutex resume_mu_;
  std::condition_variable resume_cv_;
  std::set<pid_t> resumed_;
  bool stopping_ = false;
  std::string hold_error_;  // config_.hold_exit: why the target could not be held (set before polling)
  std::mutex scan_mu_;  // guards scan_ (not mu_: a scan at exit reads the table under mu_)
  std::unique_ptr<ScanSession> scan_;
  std::mutex images_mu_;                    // SyncImages(): poll thread and snapshots
  std::atomic<uint64_t> images_synced_{0};  // execs whose image SyncImages() took out
};

}  // namespace ebpf_leak
