// The session's side of following processes (native/process/supervisor.h): what happens to the
// kernel's tables at an exec, a fork and an exit, and the messages JS gets about them.
//
// Messages (onMessage(type, ArrayBuffer)), little-endian, decoded by lib/native-layout.ts:
//   "exec"     u32 pid, u32 0, struct leak_counters of the image that ended, u64 its blocks,
//              u64 their bytes. A supervised process stays stopped until resumeProcess(pid) (JS
//              checks the new image's allocator first), or kResumeTimeout; one traced without
//              ptrace (image_keys) has run on. Then u32 the new image's command line bytes, u32 0,
//              and that command line (NUL-separated; image_keys only, maybe cut short).
//   "fork"     u32 child, u32 parent, u32 its index: a child is traced (follow_forks).
//   "process"  u32 pid, i32 wait status, u32 flags (1: seen at its exit stop, 2: scanned), u32
//              command line bytes, struct leak_counters, u64 blocks; the command line
//              (NUL-separated, padded to 8 bytes); then the blocks as leak_block records; when
//              scanned, u64 scan ns, read ns, walk ns, root bytes, heap bytes, threads, then per
//              block u64 indirect bytes, then u8 kinds, then u8 heuristics, padded to 8 bytes;
//              then u32 owner per block (0xffffffff: none), padded to 8 bytes, u64 the number of
//              lost pairs and u32 (from, to) each: a traced process exited (follow_forks).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>

#include "abi/leak.h"
#include "leak.skel.h"
#include "process/process_blocks.h"
#include "scan/scan_session.h"
#include "tracer/trace_session.h"
#include "unwind/unwinder.h"

namespace ebpf_leak {
namespace {

// How long an exec stop waits for JS to check the new image: a JS thread that long busy
// elsewhere must not hold the program forever; the image then runs with the probes it has.
constexpr auto kResumeTimeout = std::chrono::seconds(30);

template <typename T>
void Put(std::vector<uint8_t>* out, const T& value) {
  const auto* p = reinterpret_cast<const uint8_t*>(&value);
  out->insert(out->end(), p, p + sizeof(T));
}

std::string ReadCommandLine(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

bool TraceSession::StartSupervisor(NativeError* error) {
  if (config_.follow_forks) {
    uint32_t index = next_index_++;
    uint64_t bits = static_cast<uint64_t>(index) << LEAK_PROCESS_SHIFT;
    uint32_t pid = static_cast<uint32_t>(config_.pid);
    if (bpf_map_update_elem(bpf_map__fd(skel_->maps.traced_procs), &pid, &bits, BPF_ANY) != 0) {
      *error = {"ELEAK_BPF", std::string("cannot register the process: ") + ErrnoText(errno), errno};
      return false;
    }
    process_index_[config_.pid] = index;
  }
  process::Options options;
  options.follow_forks = config_.follow_forks;
  options.exit_threads = config_.scan_at_exit;
  supervisor_ = std::make_unique<process::Supervisor>(this, options);
  std::string message;
  if (!supervisor_->Start(config_.pid, &message)) {
    supervisor_.reset();
    if (!config_.supervise) {  // only the hold at exit: traced on without it, and told why
      hold_error_ = message;
      return true;
    }
    *error = {"ELEAK_PTRACE", message, 0};
    return false;
  }
  return true;
}

void TraceSession::StopSupervisor() {
  {
    std::lock_guard<std::mutex> lock(resume_mu_);
    stopping_ = true;
  }
  resume_cv_.notify_all();
  if (supervisor_) supervisor_->Stop();
}

uint64_t TraceSession::ProcessBits(pid_t pid) {
  if (!config_.follow_forks) return 0;
  auto it = process_index_.find(pid);
  return it == process_index_.end() ? 0 : static_cast<uint64_t>(it->second) << LEAK_PROCESS_SHIFT;
}

bool TraceSession::ReadProcessCounters(uint32_t index, leak_counters* out) {
  int ncpu = libbpf_num_possible_cpus();
  constexpr size_t kWords = sizeof(leak_counters) / sizeof(uint64_t);
  std::vector<uint64_t> per_cpu(static_cast<size_t>(ncpu) * kWords);
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.process_counters), &index, per_cpu.data())) return false;
  std::vector<uint64_t> sum(kWords, 0);
  for (size_t cpu = 0; cpu < static_cast<size_t>(ncpu); cpu++)
    for (size_t i = 0; i < kWords; i++) sum[i] += per_cpu[cpu * kWords + i];
  memcpy(out, sum.data(), sizeof(leak_counters));
  return true;
}

// `value` on the first CPU, zeros on the others: their sum is `value`.
void TraceSession::WriteProcessCounters(uint32_t index, const leak_counters& value) {
  int ncpu = libbpf_num_possible_cpus();
  std::vector<leak_counters> per_cpu(static_cast<size_t>(ncpu));
  memset(per_cpu.data(), 0, per_cpu.size() * sizeof(leak_counters));
  per_cpu[0] = value;
  bpf_map_update_elem(bpf_map__fd(skel_->maps.process_counters), &index, per_cpu.data(), BPF_ANY);
}

// The signal loader_changed (bpf/leak.bpf.c) sent, as its entry for the thread says: the objects
// the loader just mapped get their unwind tables before the thread runs their code.
static_assert(LEAK_LOAD_SIGNAL == SIGURG, "bpf/abi/leak.h names the signal by its number");

bool TraceSession::OnSignal(pid_t pid, pid_t tid, int signal) {
  if (signal != LEAK_LOAD_SIGNAL || skel_ == nullptr || !stop_at_loads_) return false;
  uint32_t key = static_cast<uint32_t>(tid);
  uint8_t value = 0;
  if (bpf_map_lookup_and_delete_elem(bpf_map__fd(skel_->maps.load_stops), &key, &value) != 0) return false;
  if (unwind_) unwind_->LoadProcess(pid);
  return true;
}

bool TraceSession::OnEvent(const process::Event& event) {
  switch (event.kind) {
    case process::EventKind::kExec:
      if (config_.supervise) OnExec(event);  // else image_keys: the BPF program's
      return true;
    case process::EventKind::kFork:
      return OnFork(event);
    case process::EventKind::kExit:
      OnExit(event);
      return true;
  }
  return true;
}

// The old image's address space is gone: its blocks are not leaks. They are taken out of the
// table (their totals go to JS, labelled as the image that exec'd), the counters start again, and
// the process waits while JS checks the new image's allocator.
void TraceSession::OnExec(const process::Event& event) {
  bool root = event.pid == config_.pid;
  if (root && config_.wait_for_exec && !first_exec_seen_) {
    first_exec_seen_ = true;  // our launcher becoming the program: the trace starts here
    return;
  }
  leak_counters old{};
  uint64_t blocks = 0, bytes = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (skel_ == nullptr) return;
    OwnMemory(event.pid);  // a vfork child: nothing of its own to take, its own key from now on
    std::vector<leak_block> taken;
    process::ProcessBlocks table = Blocks();
    uint64_t bits = ProcessBits(event.pid);
    table.Take(bits, &taken);
    ForgetFreedBlocks(bits);
    for (const auto& b : taken) bytes += b.size_fn & LEAK_SIZE_MASK;
    blocks = taken.size();
    leak_counters zero{};
    if (config_.follow_forks) {
      auto it = process_index_.find(event.pid);
      if (it != process_index_.end()) {
        ReadProcessCounters(it->second, &old);
        WriteProcessCounters(it->second, zero);
      }
    } else {
      // One process, stopped, its other threads gone: nothing else writes the maps now.
      std::vector<uint8_t> counters;
      if (ReadCounters(&counters)) memcpy(&old, counters.data(), sizeof old);
      int ncpu = libbpf_num_possible_cpus();
      std::vector<leak_counters> zeros(static_cast<size_t>(ncpu));
      memset(zeros.data(), 0, zeros.size() * sizeof(leak_counters));
      uint32_t key = 0;
      bpf_map_update_elem(bpf_map__fd(skel_->maps.counters), &key, zeros.data(), BPF_ANY);
      int fd = bpf_map__fd(skel_->maps.stack_totals);
      int64_t k = 0, next = 0;
      while (bpf_map_get_next_key(fd, nullptr, &next) == 0) {
        k = next;
        if (bpf_map_delete_elem(fd, &k) != 0) break;
      }
      // Threads that died inside an allocator call left it counted as in flight.
      skel_->bss->slow_calls = 0;
    }
  }
  std::vector<uint8_t> message;
  Put(&message, static_cast<uint32_t>(event.pid));
  Put(&message, static_cast<uint32_t>(0));
  Put(&message, old);
  Put(&message, blocks);
  Put(&message, bytes);
  Put(&message, static_cast<uint64_t>(0));  // no command line: /proc has it while it waits
  {
    std::lock_guard<std::mutex> lock(resume_mu_);
    resumed_.erase(event.pid);
  }
  Post("exec", std::move(message));
  WaitForResume(event.pid);
}

uint32_t TraceSession::CurrentImage() const {
  return static_cast<uint32_t>(images_synced_.load() % LEAK_MAX_PROCESSES);
}

// A process traced without ptrace runs on past its exec: the BPF program has moved its new image
// to an index of its own, and the image before's blocks and counters, which nothing writes any
// more, leave the maps here (poll thread, or a snapshot under mu_; both while skel_ lives).
void TraceSession::SyncImages() {
  if (!config_.image_keys) return;
  std::lock_guard<std::mutex> lock(images_mu_);
  uint64_t seen = __atomic_load_n(&skel_->bss->images, __ATOMIC_ACQUIRE);
  while (images_synced_.load() < seen) {
    uint32_t index = CurrentImage();
    std::vector<leak_block> taken;
    process::ProcessBlocks table = Blocks();
    table.Take(static_cast<uint64_t>(index) << LEAK_PROCESS_SHIFT, &taken);
    uint64_t bytes = 0;
    for (const auto& b : taken) bytes += b.size_fn & LEAK_SIZE_MASK;
    leak_counters old{};
    ReadProcessCounters(index, &old);
    WriteProcessCounters(index, leak_counters{});  // clean for the image that gets it next
    images_synced_++;
    std::vector<uint8_t> message;
    Put(&message, static_cast<uint32_t>(config_.pid));
    Put(&message, static_cast<uint32_t>(0));
    Put(&message, old);
    Put(&message, static_cast<uint64_t>(taken.size()));
    Put(&message, bytes);
    // The new image's command line, which /proc may no longer have: a short program can exit
    // before this runs. Only while its slot was not written by a later exec.
    std::string command;
    uint32_t slot = static_cast<uint32_t>(images_synced_.load() % LEAK_IMAGE_COMMANDS);
    if (seen - images_synced_.load() < LEAK_IMAGE_COMMANDS)
      command.assign(skel_->bss->image_commands[slot],
                     std::min<uint32_t>(skel_->bss->image_command_bytes[slot], LEAK_IMAGE_COMMAND_BYTES - 1));
    Put(&message, static_cast<uint32_t>(command.size()));
    Put(&message, static_cast<uint32_t>(0));
    message.insert(message.end(), command.begin(), command.end());
    Post("exec", std::move(message));
  }
}

void TraceSession::WaitForResume(pid_t pid) {
  std::unique_lock<std::mutex> lock(resume_mu_);
  resume_cv_.wait_for(lock, kResumeTimeout, [&] { return stopping_ || resumed_.count(pid) > 0; });
  resumed_.erase(pid);
}

// The child starts with the blocks and counters its parent had at the fork, as valgrind counts
// them in the child (its heap is a copy of the parent's). A child that runs in its parent's
// address space (vfork, posix_spawn) allocates and frees in the parent's heap, and the parent may
// free those blocks later (dash's vfork'ed commands grow the shell's own memory before they
// exec): until it execs or exits, its records are the address space owner's, key and counters.
bool TraceSession::OnFork(const process::Event& event) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr) return false;
  uint32_t index;
  if (!free_indexes_.empty()) {
    index = free_indexes_.back();
    free_indexes_.pop_back();
  } else if (next_index_ < LEAK_MAX_PROCESSES) {
    index = next_index_++;
  } else {
    lost_children_++;
    return false;
  }
  uint64_t bits = static_cast<uint64_t>(index) << LEAK_PROCESS_SHIFT;
  uint64_t traced_bits = bits;
  leak_counters counters{};
  auto parent = process_index_.find(event.pid);
  bool shared = event.shares_memory && parent != process_index_.end();
  if (shared) {
    traced_bits = ProcessBits(MemoryOwner(event.pid));
  } else if (parent != process_index_.end()) {
    process::ProcessBlocks table = Blocks();
    int64_t lost = table.Copy(ProcessBits(event.pid), bits);
    ReadProcessCounters(parent->second, &counters);
    if (lost > 0) {
      counters.dropped_allocs += static_cast<uint64_t>(lost);
      skel_->bss->blocks_dropped = true;  // a free of a block not copied is no heap error
    }
  }
  WriteProcessCounters(index, counters);
  uint32_t child = static_cast<uint32_t>(event.child);
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.traced_procs), &child, &traced_bits, BPF_ANY) != 0) {
    process::ProcessBlocks table = Blocks();
    table.Take(bits, nullptr);
    free_indexes_.push_back(index);
    lost_children_++;
    return false;
  }
  process_index_[event.child] = index;
  if (shared) memory_owner_[event.child] = MemoryOwner(event.pid);
  std::vector<uint8_t> message;
  Put(&message, child);
  Put(&message, static_cast<uint32_t>(event.pid));
  Put(&message, index);
  Post("fork", std::move(message));
  return true;
}

// The kernel's table of outstanding blocks, with its spill. Under mu_ (or the images lock).
process::ProcessBlocks TraceSession::Blocks() {
  return process::ProcessBlocks(bpf_map__fd(skel_->maps.allocs), skel_->rodata->table_buckets,
                                &allocs_table_.Groups(), bpf_map__fd(skel_->maps.spilled_allocs),
                                reinterpret_cast<int64_t*>(&skel_->bss->spilled_blocks));
}

pid_t TraceSession::MemoryOwner(pid_t pid) const {
  auto it = memory_owner_.find(pid);
  return it == memory_owner_.end() ? pid : it->second;
}

// `pid` has an address space of its own now (its exec, or the owner's exit): its records go
// under its own index from here on. Under mu_.
void TraceSession::OwnMemory(pid_t pid) {
  if (memory_owner_.erase(pid) == 0) return;
  uint32_t key = static_cast<uint32_t>(pid);
  uint64_t bits = ProcessBits(pid);
  bpf_map_update_elem(bpf_map__fd(skel_->maps.traced_procs), &key, &bits, BPF_EXIST);
}

// The recently released blocks of one process (run mode's double frees), when its address space
// ends: a later process given its index must not find them. Each key is cleared with a
// compare-and-swap in the map's mapping, so a release the kernel writes meanwhile in the same set
// (another process's) is left as it is. Under mu_.
void TraceSession::ForgetFreedBlocks(uint64_t bits) {
  if (!config_.heap_errors) return;
  static_assert(sizeof(leak_freed_set) % 8 == 0, "an array map's values are 8-byte aligned, back to back");
  size_t sets = skel_->rodata->freed_sets;
  size_t page = static_cast<size_t>(getpagesize());
  size_t bytes = (sets * sizeof(leak_freed_set) + page - 1) / page * page;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, bpf_map__fd(skel_->maps.freed_blocks), 0);
  if (p == MAP_FAILED) return;
  auto* set = static_cast<leak_freed_set*>(p);
  for (size_t i = 0; i < sets; i++)
    for (__u64& key : set[i].keys) {
      __u64 k = __atomic_load_n(&key, __ATOMIC_RELAXED);
      if (k > LEAK_SLOT_BUSY && (k & ~LEAK_ADDRESS_MASK) == bits)
        __atomic_compare_exchange_n(&key, &k, 0, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
    }
  munmap(p, bytes);
}

// Following forks, each process's report is made of what it had at its exit: its blocks leave
// the table (which stays as large as the processes alive at once need), its index is reused.
void TraceSession::OnExit(const process::Event& event) {
  // The target held at its exit stop, its memory and threads as they ended: the leak kinds.
  if (config_.scan_at_exit && !config_.follow_forks && event.pid == config_.pid) Session()->ScanAtExit(event);
  if (!config_.follow_forks) return;  // one process: its blocks stay for the final snapshot
  std::vector<leak_block> blocks;
  leak_counters counters{};
  std::string cmdline = event.stopped ? ReadCommandLine(event.pid) : std::string();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (skel_ == nullptr) return;
    auto it = process_index_.find(event.pid);
    if (it == process_index_.end()) return;
    uint32_t index = it->second;
    uint32_t pid = static_cast<uint32_t>(event.pid);
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.traced_procs), &pid);
    memory_owner_.erase(event.pid);
    // Those still in its address space (a clone(CLONE_VM) child) keep it: it is theirs now.
    std::vector<pid_t> sharers;
    for (const auto& [sharer, owner] : memory_owner_)
      if (owner == event.pid) sharers.push_back(sharer);
    for (pid_t sharer : sharers) OwnMemory(sharer);
    process::ProcessBlocks table = Blocks();
    table.Take(ProcessBits(event.pid), &blocks);
    ForgetFreedBlocks(ProcessBits(event.pid));
    ReadProcessCounters(index, &counters);
    WriteProcessCounters(index, leak_counters{});
    process_index_.erase(it);
    free_indexes_.push_back(index);
  }
  // Its memory, still there in the exit stop: the leak kinds of what it left.
  ScanResult scan;
  uint64_t scan_ns = 0;
  std::string scan_error;
  bool scanned = false;
  if (config_.scan_at_exit) {
    ScanOptions options;
    options.glibc = config_.glibc;
    scanned = ScanAtProcessExit(event, blocks.data(), blocks.size(), options, &scan, &scan_ns, &scan_error);
  }
  std::vector<uint8_t> message;
  Put(&message, static_cast<uint32_t>(event.pid));
  Put(&message, static_cast<int32_t>(event.wait_status));
  Put(&message, static_cast<uint32_t>((event.stopped ? 1 : 0) | (scanned ? 2 : 0)));
  Put(&message, static_cast<uint32_t>(cmdline.size()));
  Put(&message, counters);
  Put(&message, static_cast<uint64_t>(blocks.size()));
  message.insert(message.end(), cmdline.begin(), cmdline.end());
  message.resize((message.size() + 7) / 8 * 8, 0);
  const auto* p = reinterpret_cast<const uint8_t*>(blocks.data());
  message.insert(message.end(), p, p + blocks.size() * sizeof(leak_block));
  if (scanned) {
    const ScanStats& st = scan.stats;
    for (uint64_t v : {scan_ns, st.read_ns, st.mark_ns, st.root_bytes, st.heap_bytes, static_cast<uint64_t>(st.threads)})
      Put(&message, v);
    for (uint64_t v : scan.indirect) Put(&message, v);
    message.insert(message.end(), scan.kind.begin(), scan.kind.end());
    message.insert(message.end(), scan.heuristic.begin(), scan.heuristic.end());
    message.resize((message.size() + 7) / 8 * 8, 0);
    for (uint32_t v : scan.owner) Put(&message, v);
    message.resize((message.size() + 7) / 8 * 8, 0);
    Put(&message, static_cast<uint64_t>(scan.lost_edges.size() / 2));
    for (uint32_t v : scan.lost_edges) Put(&message, v);
  }
  Post("process", std::move(message));
}

// JS has checked the image a process exec'd; it may run.
// In the supervisor's pause of `pid` (its thread: process_index_ is read there only).
bool TraceSession::ReadProcessBlocks(pid_t pid, PageBuffer* out) {
  uint64_t bits = ProcessBits(pid);
  if (bits == 0) return false;
  PageBuffer all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!allocs_table_.IsOpen() || allocs_table_.Read(false, &all) != 0) return false;
  }
  size_t n = all.size() / sizeof(leak_block);
  const auto* records = reinterpret_cast<const leak_block*>(all.data());
  size_t mine = 0;
  for (size_t i = 0; i < n; i++) mine += (records[i].address & ~LEAK_ADDRESS_MASK) == bits;
  if (out->Reserve(std::max<size_t>(mine, 1) * sizeof(leak_block)) != 0) return false;
  for (size_t i = 0; i < n; i++) {
    if ((records[i].address & ~LEAK_ADDRESS_MASK) != bits) continue;
    leak_block b = records[i];
    b.address &= LEAK_ADDRESS_MASK;
    memcpy(out->Append(sizeof b), &b, sizeof b);
  }
  return true;
}

bool TraceSession::ScanFollowed(pid_t pid, ScanOutcome* out, NativeError* error) {
  std::string why = "tracing stopped";
  if (supervisor_) {
    ScanOptions options;
    options.glibc = config_.glibc;
    ScanSession session(pid, options, [this, pid](PageBuffer* blocks) { return ReadProcessBlocks(pid, blocks); });
    if (session.ScanNow(supervisor_.get(), out, &why)) return true;
  }
  *error = {"ELEAK_SCAN", "cannot scan process " + std::to_string(pid) + ": " + why, 0};
  return false;
}

void TraceSession::ResumeProcess(pid_t pid) {
  {
    std::lock_guard<std::mutex> lock(resume_mu_);
    resumed_.insert(pid);
  }
  resume_cv_.notify_all();
}

// A traced process's counters now.
bool TraceSession::ProcessCounters(uint32_t index, leak_counters* out) {
  std::lock_guard<std::mutex> lock(mu_);
  return skel_ != nullptr && ReadProcessCounters(index, out);
}

ProcessStats TraceSession::Processes() const {
  ProcessStats stats;
  stats.untraced_children = supervisor_ ? supervisor_->untraced_children() : 0;
  stats.lost_children = lost_children_.load();
  stats.supervised = config_.supervise && supervisor_ != nullptr;
  return stats;
}

}  // namespace ebpf_leak
