#include "unwind/unwinder.h"
#include "addon/native_error.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <set>
#include <algorithm>

#include "abi/leak.h"
#include "leak.skel.h"
#include "tracer/trace_session.h"
#include "target/target_file.h"
#include "unwind/unwind_table.h"

extern char** environ;

namespace ebpf_leak {

// An executable file mapping of /proc/PID/maps.
struct MapsLine {
  uint64_t start, end, offset, dev, ino;
  std::string path;
};

namespace {

constexpr uint32_t kRuleCapacity = 65536;  // = unwind_rules' max_entries in bpf/unwind.bpf.h
constexpr auto kScanInterval = std::chrono::milliseconds(200);

uint64_t PackRule(const leak_unwind_rule& r) {
  uint64_t v = 0;
  static_assert(sizeof r == sizeof v, "leak_unwind_rule is 8 bytes");
  memcpy(&v, &r, sizeof r);
  return v;
}

// Executable file mappings of /proc/PID/maps.
bool ReadExecMappings(int pid, std::vector<MapsLine>* out) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  if (!in) return false;
  for (std::string line; std::getline(in, line);) {
    unsigned long long start, end, offset, ino;
    unsigned major, minor;
    char perms[8];
    int consumed = 0;
    if (sscanf(line.c_str(), "%llx-%llx %7s %llx %x:%x %llu %n", &start, &end, perms, &offset, &major,
               &minor, &ino, &consumed) < 7)
      continue;
    if (perms[2] != 'x' || ino == 0) continue;
    std::string path = consumed > 0 ? line.substr(static_cast<size_t>(consumed)) : "";
    if (path.empty() || path[0] != '/') continue;
    out->push_back({start, end, offset, (static_cast<uint64_t>(major) << 20) | minor, ino, path});
  }
  return true;
}

// The very file a mapping maps, even deleted or in another mount namespace; -1 when gone.
int OpenMapping(int pid, const MapsLine& m) {
  char path[96];
  snprintf(path, sizeof path, "/proc/%d/map_files/%llx-%llx", pid, static_cast<unsigned long long>(m.start),
           static_cast<unsigned long long>(m.end));
  struct stat st;
  std::string error;
  int fd = OpenTargetFile(path, &st, &error);
  if (fd < 0) fd = OpenTargetFile("/proc/" + std::to_string(pid) + "/root" + m.path, &st, &error);
  // Another file now has the mapped file's name: its table would be wrong.
  if (fd >= 0 && (KernelDev(st.st_dev) != m.dev || st.st_ino != m.ino)) {
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

static uint32_t EffectiveMode(const TracerConfig& config) {
#if defined(__x86_64__)
  return config.stacks ? config.unwind.mode : static_cast<uint32_t>(LEAK_UNWIND_FP);
#else
  return LEAK_UNWIND_FP;
#endif
}

std::unique_ptr<Unwinder> Unwinder::Create(leak_bpf* skel, const TracerConfig& config, TraceSession* session) {
  std::unique_ptr<Unwinder> u(new Unwinder(skel, config, session));
  bool on = u->mode_ != LEAK_UNWIND_FP;
  if (on) u->CollectPreload();
  // Rows: the preloaded tables, half as much again and 1Mi more (8 MiB) for modules mapped later:
  // a program the command exec()s, a followed child's, a dlopen()ed library (libcrypto alone has
  // 86,000 rows, python 64,000).
  uint64_t rows = 0;
  for (const Pending& p : u->preload_) rows += p.table ? p.table->rows.size() : 0;
  uint64_t capacity = rows + rows / 2 + (1u << 20);
  if (capacity > config.unwind.table_rows) capacity = config.unwind.table_rows;
  skel->rodata->unwind_mode = u->mode_;
  skel->rodata->unwind_depth = config.stack_depth;
  uint32_t stacks = config.stacks ? config.stack_map_entries : 1;
  bpf_map__set_max_entries(skel->maps.unwind_rows, on ? static_cast<uint32_t>(capacity) : 1);
  bpf_map__set_max_entries(skel->maps.unwind_rules, on ? kRuleCapacity : 2);
  bpf_map__set_max_entries(skel->maps.unwind_files, on ? 8192 : 1);
  bpf_map__set_max_entries(skel->maps.unwind_missing, on ? 1024 : 1);
  bpf_map__set_max_entries(skel->maps.unwind_cache, on ? 65536 : 1);
  // The per-CPU slots in front of it: about 8 MiB in all (32 bytes a slot), at most 8192 a CPU.
  uint32_t slots = 1;
  if (on) {
    int ncpu = libbpf_num_possible_cpus();
    uint64_t budget = (8u << 20) / 32 / static_cast<uint64_t>(ncpu > 0 ? ncpu : 1);
    slots = 256;
    while (slots < 8192 && slots * 2 <= budget) slots *= 2;
  }
  bpf_map__set_max_entries(skel->maps.unwind_l1, slots);
  skel->rodata->unwind_slot_mask = slots - 1;
  bpf_map__set_max_entries(skel->maps.unwind_stacks, on ? stacks : 1);
  if (on) {
    // The kernel's frame-pointer stacks are the 'fp' mode's: with the walk here they stay empty,
    // and the stack map alone, preallocated, took ~25 ms to create.
    bpf_map__set_max_entries(skel->maps.stack_traces, 1);
    bpf_map__set_max_entries(skel->maps.overflow_stacks, 1);
    bpf_map__set_max_entries(skel->maps.stacks_seen, 1);
  }
  bpf_map__set_value_size(skel->maps.unwind_stacks,
                          offsetof(leak_unwind_stack, frames) + config.stack_depth * sizeof(uint64_t));
  // Every kind of stack id (stack map, overflow, CFI walk; the walk's only when it is on), and -1.
  // Without stacks every block has id -1 and its totals would only repeat the global counters, at
  // a map update per call.
  bool totals = config.unwind.stack_totals && config.stacks;
  skel->rodata->keep_stack_totals = totals;
  bpf_map__set_max_entries(skel->maps.stack_totals, totals ? (on ? 1 : 3) * stacks + 1 : 1);
  return u;
}

void Unwinder::Start() {
  if (mode_ == LEAK_UNWIND_FP) return;
  int rows_fd = bpf_map__fd(skel_->maps.unwind_rows);
  int rules_fd = bpf_map__fd(skel_->maps.unwind_rules);
  size_t page = static_cast<size_t>(getpagesize());
  row_capacity_ = bpf_map__max_entries(skel_->maps.unwind_rows);
  rule_capacity_ = bpf_map__max_entries(skel_->maps.unwind_rules);
  rows_bytes_ = (row_capacity_ * sizeof(leak_unwind_row) + page - 1) / page * page;
  rules_bytes_ = (rule_capacity_ * sizeof(leak_unwind_rule) + page - 1) / page * page;
  void* rows = mmap(nullptr, rows_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, rows_fd, 0);
  void* rules = mmap(nullptr, rules_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, rules_fd, 0);
  if (rows != MAP_FAILED) rows_ = static_cast<leak_unwind_row*>(rows);
  if (rules != MAP_FAILED) rules_ = static_cast<leak_unwind_rule*>(rules);
  maps_bytes_ = (2 * LEAK_UNWIND_MAX_MAPPINGS * sizeof(leak_unwind_mapping) + page - 1) / page * page;
  void* maps = mmap(nullptr, maps_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED,
                    bpf_map__fd(skel_->maps.unwind_mappings), 0);
  if (maps != MAP_FAILED) maps_ = static_cast<leak_unwind_mapping*>(maps);
  if (rules_ != nullptr) {
    // The fixed rules: 0, a gap (all zero, as the map starts); 1, the frame-pointer rule.
    rules_[LEAK_UNWIND_RULE_FP] = {16, -16, LEAK_CFA_RBP, LEAK_RBP_AT_CFA};
    rule_index_[PackRule(leak_unwind_rule{})] = LEAK_UNWIND_RULE_GAP;
    rule_index_[PackRule(rules_[LEAK_UNWIND_RULE_FP])] = LEAK_UNWIND_RULE_FP;
    next_rule_ = 2;
  }
  for (const Pending& p : preload_) Insert(p.key, p.name, p.table);
  preload_.clear();
  Scan();  // what was mapped since
  ring_ = ring_buffer__new(
      bpf_map__fd(skel_->maps.unwind_notify),
      [](void* ctx, void* data, size_t size) {
        auto* self = static_cast<Unwinder*>(ctx);
        if (size >= sizeof(leak_unwind_missing_note)) {
          leak_unwind_missing_note note;
          memcpy(&note, data, sizeof note);
          self->missing_.push_back(note);
        }
        self->notified_ = true;
        return 0;
      },
      this, nullptr);
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  thread_ = std::thread(&Unwinder::Run, this);
}

Unwinder::Unwinder(leak_bpf* skel, const TracerConfig& config, TraceSession* session)
    : skel_(skel),
      session_(session),
      pid_(config.pid),
      mode_(EffectiveMode(config)),
      depth_(config.stack_depth),
      wait_for_exec_(config.wait_for_exec),
      options_(config.unwind) {}

Unwinder::~Unwinder() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    ssize_t ignored = write(stop_fd_, &one, sizeof one);
    (void)ignored;
    thread_.join();
  }
  if (stop_fd_ >= 0) close(stop_fd_);
  if (ring_ != nullptr) ring_buffer__free(ring_);
  if (rows_ != nullptr) munmap(rows_, rows_bytes_);
  if (rules_ != nullptr) munmap(rules_, rules_bytes_);
  if (maps_ != nullptr) munmap(maps_, maps_bytes_);
}

bool Unwinder::IsUnwindId(int64_t id) {
  return id >= 0 && (static_cast<uint64_t>(id) & ~LEAK_UNWIND_ID_MASK) == LEAK_UNWIND_ID_BIT;
}

bool Unwinder::ReadStack(int64_t id, std::vector<uint64_t>* frames, uint32_t* flags) {
  if (!IsUnwindId(id)) return false;
  std::vector<uint64_t> buf(2 + depth_);  // check, len|flags, frames
  uint64_t key = static_cast<uint64_t>(id);
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.unwind_stacks), &key, buf.data()) == 0) {
    leak_unwind_stack head;
    memcpy(&head, buf.data(), offsetof(leak_unwind_stack, frames));
    uint32_t n = head.len < depth_ ? head.len : depth_;
    frames->assign(buf.begin() + 2, buf.begin() + 2 + n);
    if (flags != nullptr) *flags = head.flags;
  }
  return true;
}

void Unwinder::CollectPreload() {
  std::set<std::pair<uint64_t, uint64_t>> seen;
  auto add = [&](const leak_unwind_file_key& key, int fd, const std::string& name) {
    if (!seen.insert({key.dev, key.ino}).second) return;
    preload_.push_back({key, name, GetUnwindTable(fd)});
  };
  // What the process maps now (a `command` target: our launcher, whose libc and loader are the
  // program's too).
  std::vector<MapsLine> lines;
  if (!ReadExecMappings(pid_, &lines)) return;
  for (const MapsLine& m : lines) {
    int fd = OpenMapping(pid_, m);
    if (fd < 0) continue;
    add({m.dev, m.ino}, fd, m.path);
    close(fd);
  }
  // A `command` target is still our launcher: what the program will map once it execs.
  if (!wait_for_exec_) return;
  for (const std::string& path : options_.files) {
    struct stat st;
    std::string error;
    int fd = OpenTargetFile(path, &st, &error);
    if (fd < 0) continue;
    add({KernelDev(st.st_dev), st.st_ino}, fd, path);
    close(fd);
  }
}

bool Unwinder::LoadFile(const leak_unwind_file_key& key, int fd, const std::string& name) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (loaded_.count({key.dev, key.ino})) return true;
  }
  return Insert(key, name, GetUnwindTable(fd));
}

bool Unwinder::Insert(const leak_unwind_file_key& key, const std::string& name,
                      const std::shared_ptr<const UnwindTable>& table) {
  std::lock_guard<std::mutex> lock(mu_);
  if (loaded_.count({key.dev, key.ino})) return true;
  leak_unwind_file file{};
  file.kind = LEAK_UNWIND_FILE_NONE;
  size_t n = table ? table->rows.size() : 0;
  if (n > 0 && n < LEAK_UNWIND_MAX_FILE_ROWS && rows_ != nullptr && rules_ != nullptr) {
    if (n > row_capacity_ - next_row_) {
      tables_full_++;
    } else {
      bool ok = true;
      for (size_t i = 0; i < n && ok; i++) {
        const UnwindRow& r = table->rows[i];
        uint64_t packed = PackRule(r.rule);
        auto it = rule_index_.find(packed);
        uint32_t index;
        if (it != rule_index_.end()) {
          index = it->second;
        } else if (next_rule_ < rule_capacity_) {
          index = next_rule_++;
          rules_[index] = r.rule;
          rule_index_[packed] = index;
        } else {
          ok = false;
          break;
        }
        rows_[next_row_ + i] = {r.off, index};
      }
      if (ok) {
        file.kind = LEAK_UNWIND_FILE_TABLE;
        file.first = next_row_;
        file.count = static_cast<uint32_t>(n);
        next_row_ += static_cast<uint32_t>(n);
      } else {
        tables_full_++;
      }
    }
  }
  if (table && table->keeps_frame_pointers) {
    file.flags = LEAK_UNWIND_FILE_KEEPS_FP;
    // 'auto': without room for its table, a module that keeps frame pointers is still walked
    // right at its call sites by the frame-pointer rule.
    if (file.kind == LEAK_UNWIND_FILE_NONE && mode_ == LEAK_UNWIND_AUTO) file.kind = LEAK_UNWIND_FILE_FP;
  }
  // The rows are in place (mmap()ed memory; the syscall orders it) before the file entry that
  // makes the walker read them.
  bpf_map_update_elem(bpf_map__fd(skel_->maps.unwind_files), &key, &file, BPF_ANY);
  bpf_map_delete_elem(bpf_map__fd(skel_->maps.unwind_missing), &key);
  loaded_[{key.dev, key.ino}] = {name, file};
  return file.kind == LEAK_UNWIND_FILE_TABLE;
}

void Unwinder::LoadFiles(const std::vector<std::string>& paths) {
  if (mode_ == LEAK_UNWIND_FP || rows_ == nullptr) return;
  for (const std::string& path : paths) {
    struct stat st;
    std::string error;
    int fd = OpenTargetFile(path, &st, &error);
    if (fd < 0) continue;  // loaded when mapped, if it is
    LoadFile({KernelDev(st.st_dev), st.st_ino}, fd, path);
    close(fd);
  }
}

void Unwinder::LoadMapped(int pid, const std::vector<MapsLine>& lines) {
  for (const MapsLine& m : lines) {
    bool known;
    {
      std::lock_guard<std::mutex> lock(mu_);
      known = loaded_.count({m.dev, m.ino}) > 0;
    }
    if (known) continue;
    int fd = OpenMapping(pid, m);
    if (fd < 0) continue;
    LoadFile({m.dev, m.ino}, fd, m.path);
    close(fd);
  }
}

void Unwinder::LoadProcess(int pid) {
  if (mode_ == LEAK_UNWIND_FP || rows_ == nullptr) return;
  std::vector<MapsLine> lines;
  if (ReadExecMappings(pid, &lines)) LoadMapped(pid, lines);
}

void Unwinder::LoadMissing() {
  std::vector<leak_unwind_missing_note> notes;
  notes.swap(missing_);
  std::set<uint32_t> scanned;
  for (const leak_unwind_missing_note& n : notes) {
    // The first process's files come with Scan(); another (a followed child) is read here.
    if (static_cast<int>(n.tgid) != pid_ && scanned.insert(n.tgid).second) {
      std::vector<MapsLine> lines;
      if (ReadExecMappings(static_cast<int>(n.tgid), &lines)) LoadMapped(static_cast<int>(n.tgid), lines);
    }
    bool loaded;
    {
      std::lock_guard<std::mutex> lock(mu_);
      loaded = loaded_.count({n.key.dev, n.key.ino}) > 0;
    }
    // Not found where it was met (that process is gone): the next process to meet it asks again.
    if (!loaded) bpf_map_delete_elem(bpf_map__fd(skel_->maps.unwind_missing), &n.key);
  }
}

bool Unwinder::Scan() {
  // Cleared first: a pc the walker fails to find from now on asks again. And the address space
  // the walker last saw, read before the maps: if the target exec()s after this, the table is
  // tagged with the old one and not used.
  __atomic_store_n(&skel_->bss->unwind_need_scan, 0, __ATOMIC_SEQ_CST);
  uint64_t mm = __atomic_load_n(&skel_->bss->unwind_cur_mm, __ATOMIC_SEQ_CST);
  std::vector<MapsLine> lines;
  if (!ReadExecMappings(pid_, &lines)) return false;
  std::map<uint64_t, Mapping> now;
  for (const MapsLine& m : lines) now[m.start] = {m.end, m.dev, m.ino};
  LoadMapped(pid_, lines);
  // Code unmapped, or replaced by other code at the same place (dlclose, then dlopen): the rules
  // cached for its addresses are no longer its.
  for (const auto& [start, old] : mappings_) {
    auto it = now.find(start);
    if (it == now.end() || it->second.end != old.end || it->second.dev != old.dev ||
        it->second.ino != old.ino)
      PurgeCache(start, old.end);
  }
  mappings_ = std::move(now);
  // The walker's table: every mapping of a module user space looked at.
  std::vector<leak_unwind_mapping> table;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const MapsLine& m : lines) {
      auto it = loaded_.find({m.dev, m.ino});
      if (it == loaded_.end()) continue;
      table.push_back({m.start, m.end, m.offset, m.ino, it->second.file});
    }
  }
  Publish(std::move(table), mm);
  return true;
}

// Writes the half not in use, then switches the walker to it. A walk reads the reference once, and
// lasts microseconds: the half it reads is not rewritten before the next switch but one.
void Unwinder::Publish(std::vector<leak_unwind_mapping> table, uint64_t mm) {
  if (maps_ == nullptr) return;
  std::sort(table.begin(), table.end(),
            [](const leak_unwind_mapping& a, const leak_unwind_mapping& b) { return a.start < b.start; });
  if (table.size() > LEAK_UNWIND_MAX_MAPPINGS) table.resize(LEAK_UNWIND_MAX_MAPPINGS);
  auto same = [](const leak_unwind_mapping& a, const leak_unwind_mapping& b) {
    return memcmp(&a, &b, sizeof a) == 0;
  };
  if (mm == published_mm_ && table.size() == published_.size() &&
      std::equal(table.begin(), table.end(), published_.begin(), same))
    return;
  int half = 1 - active_half_;
  uint64_t base = static_cast<uint64_t>(half) * LEAK_UNWIND_MAX_MAPPINGS;
  if (!table.empty()) memcpy(&maps_[base], table.data(), table.size() * sizeof(leak_unwind_mapping));
  __atomic_store_n(&skel_->bss->unwind_half_mm[half], mm, __ATOMIC_RELEASE);
  __atomic_store_n(&skel_->bss->unwind_mappings_ref, (base << 32) | table.size(), __ATOMIC_RELEASE);
  published_mm_ = mm;
  active_half_ = half;
  published_ = std::move(table);
}

void Unwinder::PurgeCache(uint64_t start, uint64_t end) {
  int fd = bpf_map__fd(skel_->maps.unwind_cache);
  std::vector<leak_unwind_cache_key> doomed;
  leak_unwind_cache_key key{}, next{};
  leak_unwind_cache_key* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    if (next.pc >= start && next.pc < end) doomed.push_back(next);
    key = next;
    prev = &key;
  }
  for (leak_unwind_cache_key& k : doomed) bpf_map_delete_elem(fd, &k);
  // And every CPU's slots: they are stale once the epoch moves.
  __atomic_add_fetch(&skel_->bss->unwind_epoch, 1, __ATOMIC_SEQ_CST);
}

void Unwinder::Run() {
  pthread_setname_np(pthread_self(), "ebpf-leak-unwind");
  session_->SetThreadIgnored(CurrentTid(), true);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 1;
  epoll_ctl(ep, EPOLL_CTL_ADD, stop_fd_, &ev);
  if (ring_ != nullptr) {
    ev.data.u64 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, ring_buffer__epoll_fd(ring_), &ev);
  }
  using Clock = std::chrono::steady_clock;
  Clock::time_point last_scan = Clock::now();
  bool alive = true;
  for (;;) {
    epoll_event evs[2];
    int n = epoll_wait(ep, evs, 2, static_cast<int>(kScanInterval.count()));
    bool stop = false;
    for (int i = 0; i < n; i++)
      if (evs[i].data.u64 == 1) stop = true;
    if (stop) break;
    if (ring_ != nullptr) ring_buffer__consume(ring_);
    Clock::time_point now = Clock::now();
    if (alive && (notified_.exchange(false) || now - last_scan >= kScanInterval)) {
      alive = Scan();
      last_scan = now;
    }
    if (!missing_.empty()) LoadMissing();
  }
  close(ep);
}

}  // namespace ebpf_leak
