// User-space side of the BPF stack walker (bpf/unwind.bpf.h): picks the mode, sizes its maps, loads
// the unwind tables (native/unwind/unwind_table.cc) of the target's modules into them, before the
// target runs and then as it maps new ones, and reads the stacks the walker stored.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "abi/unwind_types.h"
#include "unwind/unwind_options.h"

struct leak_bpf;
struct ring_buffer;

namespace ebpf_leak {

class TraceSession;
struct TracerConfig;
struct UnwindTable;  // native/unwind/unwind_table.h
struct MapsLine;     // native/unwind/unwinder.cc

// The walker's counters and tables, for Tracer.unwindStats() (native/unwind/unwind_js.h).
struct UnwindStats {
  uint32_t mode = 0;                  // enum leak_unwind_mode
  leak_unwind_counters counters{};    // summed over the CPUs
  uint64_t table_rows = 0, table_row_capacity = 0, rules = 0, tables_full = 0, mappings = 0;
  struct Module {
    std::string path;
    uint32_t kind = 0;  // enum leak_unwind_file_kind
    uint64_t rows = 0;
  };
  std::vector<Module> modules;
};

class Unwinder {
 public:
  // Between skeleton open and load: picks the mode, builds the unwind tables of the modules known
  // now (what the target maps, or, held before exec, what it will map) and sizes the maps for
  // them. Always returns an Unwinder (mode 'fp': one that does nothing).
  static std::unique_ptr<Unwinder> Create(leak_bpf* skel, const TracerConfig& config, TraceSession* session);
  // After load: puts those tables in the maps, then watches on a thread of its own for modules
  // the target maps later.
  void Start();
  ~Unwinder();
  Unwinder(const Unwinder&) = delete;
  Unwinder& operator=(const Unwinder&) = delete;

  // Ids of CFI-walked stacks (LEAK_UNWIND_ID_BIT).
  static bool IsUnwindId(int64_t id);
  // The frames of one; false when `id` is not such an id. Empty frames: not (or no longer) there.
  bool ReadStack(int64_t id, std::vector<uint64_t>* frames, uint32_t* flags = nullptr);
  // Counters and table sizes, for Tracer.unwindStats().
  UnwindStats Stats();
  // Loads the tables of files an image is about to map (one held at its exec): its first walks
  // find them, where a table loaded once the walker asked for it comes after those walks.
  void LoadFiles(const std::vector<std::string>& paths);
  // Loads the tables of what process `pid` maps now (one held where its loader mapped a library).
  void LoadProcess(int pid);

 private:
  Unwinder(leak_bpf* skel, const TracerConfig& config, TraceSession* session);
  struct Pending {
    leak_unwind_file_key key;
    std::string name;
    std::shared_ptr<const UnwindTable> table;
  };
  void CollectPreload();
  void Run();
  // Reads /proc/PID/maps: loads the table of every executable file mapping not loaded yet, and
  // forgets the cached rules of code that was unmapped. False when the process is gone.
  bool Scan();
  // Loads the tables of the files in `lines` (process `pid`'s mappings) not loaded yet.
  void LoadMapped(int pid, const std::vector<MapsLine>& lines);
  // The files the walker met without a table, from `missing_`: each loaded from the process that
  // mapped it, or forgotten so that the next walk through it asks again.
  void LoadMissing();
  bool LoadFile(const leak_unwind_file_key& key, int fd, const std::string& name);
  bool Insert(const leak_unwind_file_key& key, const std::string& name,
              const std::shared_ptr<const UnwindTable>& table);
  void PurgeCache(uint64_t start, uint64_t end);

  leak_bpf* skel_;
  TraceSession* session_;
  int pid_;
  uint32_t mode_;
  uint32_t depth_;
  bool wait_for_exec_;
  UnwindOptions options_;
  std::vector<Pending> preload_;  // from Create() to Start()

  std::mutex mu_;  // the fields below, and the maps' contents
  leak_unwind_row* rows_ = nullptr;  // mmap()ed `unwind_rows`
  size_t rows_bytes_ = 0;
  leak_unwind_rule* rules_ = nullptr;  // mmap()ed `unwind_rules`
  size_t rules_bytes_ = 0;
  uint32_t row_capacity_ = 0, rule_capacity_ = 0;
  uint32_t next_row_ = 0, next_rule_ = 0;
  std::unordered_map<uint64_t, uint32_t> rule_index_;
  struct Loaded {
    std::string name;
    leak_unwind_file file;
  };
  std::map<std::pair<uint64_t, uint64_t>, Loaded> loaded_;  // (dev, ino)
  uint32_t tables_full_ = 0;  // modules left without rows: no room
  // Executable file mappings of the last scan: start -> (end, dev, ino).
  struct Mapping {
    uint64_t end, dev, ino;
  };
  std::map<uint64_t, Mapping> mappings_;
  // mmap()ed `unwind_mappings`: two halves; the table published last, in half active_half_.
  leak_unwind_mapping* maps_ = nullptr;
  size_t maps_bytes_ = 0;
  int active_half_ = 1;
  std::vector<leak_unwind_mapping> published_;
  uint64_t published_mm_ = 0;
  void Publish(std::vector<leak_unwind_mapping> table, uint64_t mm);

  ring_buffer* ring_ = nullptr;
  std::vector<leak_unwind_missing_note> missing_;  // from unwind_notify; the watching thread's only
  int stop_fd_ = -1;
  std::atomic<bool> notified_{false};
  std::thread thread_;
};

}  // namespace ebpf_leak
