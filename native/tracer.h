// One traced process: the BPF object, its uprobe links, and the thread that drains the event
// ring buffer and watches for the process to exit. JS sees it as `new Tracer(config, onMessage)`
// with attach() / snapshot() / readStacks() / counters() / setMark() / eventsDelivered() / close().
#pragma once

#include <napi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "alloc_table_reader.h"
#include "errors.h"
#include "event_slots.h"
#include "page_buffer.h"
#include "unwinder.h"

struct leak_bpf;
struct bpf_link;
struct ring_buffer;

namespace ebpf_leak {

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
  UnwindOptions unwind;  // the CFI stack walker (native/unwinder.h)
};

class Tracer : public Napi::ObjectWrap<Tracer> {
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
  bool DoReadStacks(const std::vector<int64_t>& ids, std::vector<std::vector<uint64_t>>* stacks,
                    NativeError* error);

  // Adds (or removes) a thread of this process to the BPF program's `ignored_tids`, so its
  // allocations are not recorded. A no-op unless config_.ignore_own_threads. Needs skel_: callers
  // hold mu_, or are the poll thread (which runs only while skel_ lives).
  void SetThreadIgnored(int tid, bool ignored);

 private:
  Napi::Value Attach(const Napi::CallbackInfo& info);
  Napi::Value Snapshot(const Napi::CallbackInfo& info);
  Napi::Value ReadStacks(const Napi::CallbackInfo& info);
  Napi::Value ReadModules(const Napi::CallbackInfo& info);
  Napi::Value Counters(const Napi::CallbackInfo& info);
  Napi::Value SetMark(const Napi::CallbackInfo& info);
  Napi::Value EventsDelivered(const Napi::CallbackInfo& info);
  Napi::Value CloseJs(const Napi::CallbackInfo& info);
  Napi::Value CloseAsync(const Napi::CallbackInfo& info);
  // Defined in native/unwinder.cc.
  Napi::Value ReadStackTotals(const Napi::CallbackInfo& info);
  Napi::Value UnwindStats(const Napi::CallbackInfo& info);
  static Napi::Value Demangle(const Napi::CallbackInfo& info);

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
};

}  // namespace ebpf_leak
