// One traced process, in plain C++: the BPF object, its uprobe links, the thread that drains the
// event ring buffer and watches for the process to exit (trace_session.cc), its uprobes
// (trace_session_probes.cc), the reads of its maps (trace_session_reads.cc) and the processes it
// follows (trace_session_processes.cc). JS reaches it through the Tracer ObjectWrap
// (native/tracer/tracer.h), which converts values and runs the slow calls on worker threads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "addon/native_error.h"
#include "process/process_blocks.h"
#include "process/supervisor.h"
#include "tracer/alloc_table_reader.h"
#include "unwind/unwind_options.h"

struct leak_bpf;
struct leak_counters;
struct bpf_link;
struct ring_buffer;

namespace ebpf_leak {

class EventSlots;  // native/tracer/event_slots.h
class PageBuffer;  // native/addon/page_buffer.h
class ScanSession;  // native/scan/scan_session.h
struct ScanOutcome;
class Unwinder;  // native/unwind/unwinder.h

// Whether the allocator function `fn` (enum leak_fn) gets a return probe.
bool HasReturnProbe(uint32_t fn);

struct ProbeSpec {
  uint32_t fn = 0;             // enum leak_fn
  std::string path;            // file the offsets are in
  uint64_t entry_offset = 0;   // where the entry uprobe goes
  uint64_t return_offset = 0;  // function entry, for the uretprobe (not used for free)
  bool entry_only = false;     // no uretprobe (lib/probes/operators.ts proved it needs none)
  // A preloaded malloc or calloc: entry_offset is the nop after its call into glibc, probed by
  // alloc_preloaded (bpf/leak.bpf.c) alone, with no entry or return probe.
  bool after_call = false;
  int64_t call_return_delta = 0;  // entry-only operator new: its allocation call's return site - entry_offset
  // An entry-only operator new that needs no probe (struct leak_operator_site): empty otherwise.
  std::vector<uint8_t> site_code;
  uint32_t site_return_at = 0;
  uint32_t site_sp_delta = 0;
  bool site_zero_as_one = false;
  uint64_t site_insn_starts = 0;
};

// The attach cookie of a probe: enum leak_fn and how the program treats it (bpf/abi/leak.h).
uint64_t ProbeCookie(const ProbeSpec& p);

// Every field comes from lib/ (lib/tracer/options.ts owns the defaults and limits); the zeros
// here are only what a field holds before it is read.
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
  // ThreadIgnore in trace_session.cc).
  bool ignore_own_threads = false;
  bool classic_uprobes = false;  // never multi-uprobe links (EBPF_LEAK_ATTACH=uprobe in lib/)
  // Run mode: every block was seen allocated, so releasing anything else is a heap error
  // (bpf/heap_errors.bpf.h), and released blocks are remembered to tell double frees.
  bool heap_errors = false;
  // A release's stack is walked and kept for a later double free's report (keepStacktraces).
  bool release_stacks = true;
  uint32_t freed_blocks = 0;     // recently released blocks remembered
  uint64_t allocator_inode = 0;  // the allocator's file: its own frees are not errors
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
  // goes on without the hold; `hold_refused`: why lib/ does not ask for it.
  bool hold_exit = false;
  std::string hold_refused;
  bool glibc = false;  // the probed allocator is glibc's (native/scan/heap_scan.h)
  // The dynamic loader's `_dl_debug_state()` (file, offset), probed in supervised processes so
  // that a dlopen()ed library's unwind table is loaded before its code runs; empty: not probed.
  std::string loader_path;
  uint64_t loader_offset = 0;
};

// Where a session's messages go: the glue hands them to JS. Called from the session's poll and
// supervisor threads; never blocks.
class SessionOutput {
 public:
  virtual ~SessionOutput() = default;
  // `slot` >= 0: an events batch of `length` bytes in that event slot, `bytes` unused; the slot
  // goes back to the poll thread when the message cannot be delivered.
  virtual void Post(const char* type, std::vector<uint8_t> bytes, int slot, size_t length) = 0;
};

// Counts of the processes a session follows.
struct ProcessStats {
  uint64_t untraced_children = 0;
  uint64_t lost_children = 0;  // not followed: no index left
  bool supervised = false;
};

class TraceSession : public process::Handler {
 public:
  // `output` and `event_slots` outlive the session (the glue owns them).
  TraceSession(TracerConfig config, SessionOutput* output, EventSlots* event_slots);
  ~TraceSession() override;
  TraceSession(const TraceSession&) = delete;
  TraceSession& operator=(const TraceSession&) = delete;

  // Stops the poll thread and the supervisor, detaches every probe and frees the BPF object.
  // Returns whether this call closed it (false: it was closed already).
  bool Close();

  // The slow calls, run on worker threads.
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
  bool DoAddProbes(const std::vector<ProbeSpec>& probes, NativeError* error);
  // The unwind tables of files a new image will map (native/unwind/unwinder.h's LoadFiles).
  bool DoLoadUnwindFiles(const std::vector<std::string>& paths, NativeError* error);
  // loader_changed on the dynamic loader (config_.loader_path); left out when it cannot attach.
  void AttachLoaderProbe(bool multi);
  // Stops every thread of the target, scans its memory for the leak kinds, resumes it.
  bool DoScan(pid_t pid, ScanOutcome* out, NativeError* error);

  // The quick calls, on the JS thread. False (or null) once closed.
  bool Counters(std::vector<uint8_t>* out);
  // {s64 stack id, s64 bytes, s64 blocks} records of every stack id seen (-1: no stack). False
  // with an empty error code when not attached.
  bool ReadStackTotals(std::vector<uint8_t>* out, NativeError* error);
  // Runs `fn` with the stack walker while the BPF object lives; false when it does not.
  bool WithUnwinder(const std::function<void(Unwinder&)>& fn);
  // The wait status recorded as an attached target's last thread exited.
  bool ExitStatus(uint32_t* status);
  void SetMark(uint64_t mark);
  // The scan made at the target's exit, or null with the reason there is none.
  std::unique_ptr<ScanOutcome> TakeExitScan(std::string* reason);
  // JS has checked the image process `pid` exec'd; it may run.
  void ResumeProcess(pid_t pid);
  bool ProcessCounters(uint32_t index, leak_counters* out);
  ProcessStats Processes() const;

  // Adds (or removes) a thread of this process to the BPF program's `ignored_tids`, so its
  // allocations are not recorded. A no-op unless config_.ignore_own_threads. Needs skel_: callers
  // hold mu_, or are the poll thread (which runs only while skel_ lives).
  void SetThreadIgnored(int tid, bool ignored);

  // process::Handler (trace_session_processes.cc), on the supervisor's thread.
  bool OnEvent(const process::Event& event) override;
  bool OnSignal(pid_t pid, pid_t tid, int signal) override;

 private:
  // Whether the BPF object is loaded (ELEAK_CLOSED in `error` when not). Callers hold mu_.
  bool Attached(NativeError* error) const;
  bool ReadBlocks(PageBuffer* out);
  // followForks (trace_session_processes.cc): the scan of one traced process, of its own blocks,
  // their addresses without its index.
  bool ScanFollowed(pid_t pid, ScanOutcome* out, NativeError* error);
  bool ReadProcessBlocks(pid_t pid, PageBuffer* out);
  ScanSession* Session();
  bool StartSupervisor(NativeError* error);
  void StopSupervisor();
  bool AttachLinks(const std::vector<ProbeSpec>& probes, bool multi, NativeError* error);
  uint64_t ProcessBits(pid_t pid);
  process::ProcessBlocks Blocks();
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
  // Marks where operator new's calls to the allocator return; gives back the probes that still
  // need a link (all but the operator news malloc's return knows by their code).
  std::vector<ProbeSpec> MarkOperatorReturns(const std::vector<ProbeSpec>& probes);
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

  TracerConfig config_;
  SessionOutput* output_;
  EventSlots* event_slots_;  // no slots with events off

  std::mutex mu_;  // held while the BPF object is used or torn down
  leak_bpf* skel_ = nullptr;
  std::vector<bpf_link*> links_;
  std::vector<int> multi_links_;  // fds of multi-uprobe links
  const char* attach_mode_ = "";
  bool after_calls_ = false;  // alloc_preloaded loaded: the first plan had probes after a call
  bool stop_at_loads_ = false;  // loader_changed loaded: supervised, with the loader probed
  ring_buffer* ring_ = nullptr;
  std::unique_ptr<Unwinder> unwind_;  // from load to DetachAll()
  AllocTableReader allocs_table_;     // reads `allocs`, from load to DetachAll()
  int pidfd_ = -1;
  int stop_fd_ = -1;
  std::thread poller_;
  std::atomic<bool> closed_{false};
  // Poll thread only: the slot being filled (-1: none) and its bytes; and the final drain's
  // events when JS has every slot.
  int slot_ = -1;
  size_t slot_used_ = 0;
  std::chrono::steady_clock::time_point slot_started_;  // its first event's arrival
  std::vector<uint8_t> overflow_;

  // Processes (trace_session_processes.cc). Indexes and execs: supervisor thread only.
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

// The calling thread's id (gettid).
int CurrentTid();

// While alive, the calling thread's allocations are not recorded (when the tracer traces its own
// process). Wraps the worker-thread side of every native call, so a libuv worker that runs a
// snapshot is ignored for exactly that long and counts again when it runs the user's work.
class ThreadIgnore {
 public:
  explicit ThreadIgnore(TraceSession* session) : session_(session), tid_(CurrentTid()) {
    session_->SetThreadIgnored(tid_, true);
  }
  ~ThreadIgnore() { session_->SetThreadIgnored(tid_, false); }
  ThreadIgnore(const ThreadIgnore&) = delete;
  ThreadIgnore& operator=(const ThreadIgnore&) = delete;

 private:
  TraceSession* session_;
  int tid_;
};

}  // namespace ebpf_leak
