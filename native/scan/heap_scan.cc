// One file by design: the Scanner is one pass of memcheck's leak search (the roots, the mark from them, the pass over the blocks left) over one set of per-block arrays; the window reads it overlaps with are the two classes before it.
#include "scan/heap_scan.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cstring>
#include <iterator>
#include <utility>

#include "scan/target_memory.h"

namespace ebpf_leak {
namespace {

using Clock = std::chrono::steady_clock;

uint64_t NsSince(Clock::time_point t) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t).count());
}

// glibc's malloc: a chunk's header is the two words before the block; the size word's low bits
// are flags. A non-main arena is a heap of at most 64 MiB aligned to its size.
constexpr uint64_t kChunkHeader = 16;
constexpr uint64_t kMmappedBit = 2;
constexpr uint64_t kArenaHeapBytes = 64ull << 20;
constexpr uint64_t kPage = 4096;
// Bytes of the target's memory read at once: a window that stays in cache while it is scanned.
constexpr size_t kWindow = 2u << 20;
// Blocks closer than this are read in one piece.
constexpr uint64_t kSpanGap = 64 * 1024;
constexpr int kVtableWords = 20;

enum class State : uint8_t { kUnreached, kIndirect, kPossible, kReachable };

// The window: an anonymous mapping of our own.
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (data_) munmap(data_, size_);
  }
  bool Allocate(size_t size) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    data_ = static_cast<uint8_t*>(p);
    size_ = size;
    return true;
  }
  uint8_t* data() const { return data_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Copies a range of the target into a buffer on a thread of its own, one request at a time, so
// that the copy (in the kernel, on one CPU) overlaps the scan of the previous window (on the
// other). Without its thread (it could not start) a request is read at once, in place.
class Prefetcher {
 public:
  explicit Prefetcher(pid_t pid) : pid_(pid) {}
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;
  ~Prefetcher() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // The second buffer (`size` bytes) and the thread; false when either cannot be had.
  bool Start(size_t size) {
    if (!buffer_.Allocate(size)) return false;
    try {
      thread_ = std::thread([this] { Loop(); });
    } catch (...) {
      return false;
    }
    return true;
  }
  uint8_t* buffer() const { return buffer_.data(); }

  void Read(uint64_t address, size_t length, uint8_t* out) {
    if (!thread_.joinable()) {
      ReadRemote(pid_, address, length, out);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      address_ = address;
      length_ = length;
      out_ = out;
      pending_ = true;
    }
    cv_.notify_all();
  }

  // Until the last request is read.
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !pending_; });
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return pending_ || stop_; });
      if (stop_) return;
      uint64_t address = address_;
      size_t length = length_;
      uint8_t* out = out_;
      lock.unlock();
      ReadRemote(pid_, address, length, out);
      lock.lock();
      pending_ = false;
      cv_.notify_all();
    }
  }

  pid_t pid_;
  Buffer buffer_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool pending_ = false;
  bool stop_ = false;
  uint64_t address_ = 0;
  size_t length_ = 0;
  uint8_t* out_ = nullptr;
};

struct Range {
  uint64_t start, end;
};

std::vector<uint64_t> GeneralRegisters(const user_regs_struct& g) {
#if defined(__x86_64__)
  return {g.rax, g.rbx, g.rcx, g.rdx, g.rsi, g.rdi, g.rbp, g.rsp,
          g.r8,  g.r9,  g.r10, g.r11, g.r12, g.r13, g.r14, g.r15};
#else
  std::vector<uint64_t> out(std::begin(g.regs), std::end(g.regs));
  out.push_back(g.sp);
  return out;
#endif
}

uint64_t StackPointer(const user_regs_struct& g) {
#if defined(__x86_64__)
  return g.rsp;
#else
  return g.sp;
#endif
}

// What the walk needs of a block besides its pointers, read once: its chunk's size word (glibc
// keeps it just before the block) and its first three words (where the heuristics look).
struct BlockHead {
  uint64_t size_word = 0;
  uint64_t words[3] = {0, 0, 0};
};

class Scanner {
 public:
  Scanner(pid_t pid, const std::vector<ScanBlock>& blocks, const ScanOptions& options)
      : pid_(pid), options_(options), n_(blocks.size()) {
    // Sorted as (address, index) pairs: an index sort comparing through `blocks` took most of
    // the setup for a million blocks, a cache miss per comparison.
    std::vector<std::pair<uint64_t, uint32_t>> sorted(n_);
    for (size_t i = 0; i < n_; i++) sorted[i] = {blocks[i].address, static_cast<uint32_t>(i)};
    std::sort(sorted.begin(), sorted.end());
    order_.resize(n_);
    start_.resize(n_);
    size_.resize(n_);
    for (size_t i = 0; i < n_; i++) {
      order_[i] = sorted[i].second;
      start_[i] = sorted[i].first;
      size_[i] = blocks[order_[i]].size;
    }
    state_.assign(n_, State::kUnreached);
    heuristic_.assign(n_, Heuristic::kNone);
    indirect_.assign(n_, 0);
    owner_.assign(n_, 0);
    head_.assign(n_, BlockHead{});
    edge_begin_.assign(n_ + 1, 0);
    pending_.assign(n_, false);
    if (n_ > 0) {
      lowest_ = start_[0];
      for (size_t i = 0; i < n_; i++) highest_ = std::max(highest_, start_[i] + std::max<uint64_t>(size_[i], 1));
    }
  }

  bool Run(const std::vector<ScanThread>& threads, ScanResult* result, std::string* error) {
    auto t0 = Clock::now();
    if (!ReadMappings(pid_, &maps_)) {
      *error = "cannot read the memory map of process " + std::to_string(pid_);
      return false;
    }
    if (!window_.Allocate(kWindow)) {
      *error = "cannot map a buffer for the scan";
      return false;
    }
    ReadBlocks();
    const std::vector<Range> roots = Roots(threads);
    result->stats.read_ns = NsSince(t0);
    auto t1 = Clock::now();

    for (const Range& r : roots) ScanRoot(r);
    for (const ScanThread& t : threads) {
      result->stats.threads++;
      if (!t.has_regs || !t.regs_are_roots) continue;
      result->stats.threads_with_regs++;
      for (uint64_t v : GeneralRegisters(t.regs)) Reach(v, Find(v), /*prior_definite=*/true);
    }
    Drain(-1);
    // Cliques: every block nothing reached leads the unclaimed ones it reaches.
    for (size_t i = 0; i < n_; i++) {
      if (state_[i] != State::kUnreached) continue;
      Push(i);
      Drain(static_cast<int64_t>(i));
    }
    result->stats.mark_ns = NsSince(t1);

    result->kind.assign(n_, 0);
    result->heuristic.assign(n_, 0);
    result->indirect.assign(n_, 0);
    result->owner.assign(n_, kNoOwner);
    for (size_t i = 0; i < n_; i++) {
      LeakKind k = state_[i] == State::kReachable  ? LeakKind::kReachable
                   : state_[i] == State::kPossible ? LeakKind::kPossible
                   : state_[i] == State::kIndirect ? LeakKind::kIndirect
                                                   : LeakKind::kDefinite;
      result->kind[order_[i]] = static_cast<uint8_t>(k);
      result->heuristic[order_[i]] = static_cast<uint8_t>(heuristic_[i]);
      result->indirect[order_[i]] = state_[i] == State::kUnreached ? indirect_[i] : 0;
      if (state_[i] == State::kIndirect) result->owner[order_[i]] = order_[owner_[i]];
    }
    LostEdges(&result->lost_edges);
    result->stats.root_bytes = root_bytes_;
    result->stats.heap_bytes = heap_bytes_;
    result->stats.scanned_blocks = scanned_blocks_;
    return true;
  }

 private:
  // Reads every block once, in address order, a window of neighbours at a time, and keeps of it
  // only what the walk needs: its head, and its pointers to blocks (the graph's edges). Nothing
  // the size of the heap is copied.
  // The blocks in address order, read a window at a time: each window's words are looked up
  // while the next one is copied out of the target by the prefetcher's thread.
  void ReadBlocks() {
    struct Span {
      size_t i, j;  // blocks [i, j)
      uint64_t base, end;
    };
    std::vector<Span> spans;
    for (size_t i = 0; i < n_;) {
      const uint64_t base = start_[i] >= kChunkHeader ? start_[i] - kChunkHeader : 0;
      uint64_t end = start_[i] + size_[i];
      size_t j = i + 1;
      while (j < n_ && start_[j] + size_[j] <= base + kWindow && start_[j] - kChunkHeader <= end + kSpanGap) {
        end = std::max(end, start_[j] + size_[j]);
        j++;
      }
      spans.push_back({i, j, base, end});
      i = j;
    }
    Prefetcher prefetcher(pid_);
    uint8_t* buffers[2] = {window_.data(), prefetcher.Start(kWindow) ? prefetcher.buffer() : nullptr};
    auto small = [&](size_t k) { return spans[k].end - spans[k].base <= kWindow; };
    auto request = [&](size_t k, int slot) {
      prefetcher.Read(spans[k].base, static_cast<size_t>(spans[k].end - spans[k].base), buffers[slot]);
    };
    // With no second buffer, every read is made in place, one after another.
    const bool overlap = buffers[1] != nullptr;
    int slot = 0;
    if (!spans.empty() && small(0)) request(0, 0);
    for (size_t k = 0; k < spans.size(); k++) {
      const Span& sp = spans[k];
      if (small(k)) {
        prefetcher.Wait();
        uint8_t* w = buffers[slot];
        const bool ahead = k + 1 < spans.size() && small(k + 1);
        if (ahead && overlap) request(k + 1, slot ^ 1);
        heap_bytes_ += sp.end - sp.base;
        for (size_t b = sp.i; b < sp.j; b++) {
          const uint8_t* data = w + (start_[b] - sp.base);
          SetHead(b, data - kChunkHeader, data, size_[b]);
          Extract(data, static_cast<size_t>(size_[b]));
          edge_begin_[b + 1] = edge_to_.size();
        }
        if (overlap) {
          slot ^= 1;
        } else if (ahead) {
          request(k + 1, 0);
        }
      } else {
        // Larger than a window: its head first, then its words a window at a time.
        uint8_t* w = buffers[slot];
        const size_t i = sp.i;
        uint8_t head[kChunkHeader + 24] = {};
        ReadRemote(pid_, sp.base, sizeof head, head);
        SetHead(i, head, head + kChunkHeader, size_[i]);
        for (uint64_t at = 0; at < size_[i]; at += kWindow) {
          size_t len = static_cast<size_t>(std::min<uint64_t>(kWindow, size_[i] - at));
          ReadRemote(pid_, start_[i] + at, len, w);
          heap_bytes_ += len;
          Extract(w, len);
        }
        edge_begin_[i + 1] = edge_to_.size();
        if (k + 1 < spans.size() && small(k + 1)) request(k + 1, slot);
      }
    }
  }

  // The pointers between lost blocks (definitely or indirectly), each pair once, in input indices.
  void LostEdges(std::vector<uint32_t>* out) const {
    out->clear();
    auto lost = [this](size_t i) { return state_[i] == State::kUnreached || state_[i] == State::kIndirect; };
    std::vector<uint32_t> targets;
    for (size_t i = 0; i < n_; i++) {
      if (!lost(i)) continue;
      targets.clear();
      for (size_t e = edge_begin_[i]; e < edge_begin_[i + 1]; e++) {
        const size_t to = edge_to_[e];
        if (to != i && lost(to) && !NextChunk(edge_ptr_[e], to)) targets.push_back(static_cast<uint32_t>(to));
      }
      std::sort(targets.begin(), targets.end());
      targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
      for (uint32_t to : targets) {
        out->push_back(order_[i]);
        out->push_back(order_[to]);
      }
    }
  }

  void SetHead(size_t i, const uint8_t* header, const uint8_t* data, uint64_t size) {
    BlockHead& h = head_[i];
    memcpy(&h.size_word, header + 8, 8);
    memcpy(h.words, data, static_cast<size_t>(std::min<uint64_t>(size, 24) / 8 * 8));
  }

  // Whole words only (a pointer is 8-byte aligned, and so is every block): those that point
  // into a block become edges of the block being read.
  void Extract(const uint8_t* data, size_t bytes) {
    const size_t words = bytes / 8;
    const uint64_t lo = lowest_, hi = highest_;
    for (size_t k = 0; k < words; k++) {
      uint64_t v;
      memcpy(&v, data + k * 8, sizeof v);
      if (v < lo || v >= hi) continue;
      int64_t t = FindAny(v);
      if (t < 0) continue;
      edge_ptr_.push_back(v);
      edge_to_.push_back(static_cast<uint32_t>(t));
    }
  }

  std::vector<Range> Roots(const std::vector<ScanThread>& threads) {
    std::vector<Range> skip;
    // The allocator's memory is not a root: its arenas hold its own pointers to chunks.
    for (size_t i = 0; i < n_; i++) {
      if (options_.glibc) {
        const uint64_t chunk = start_[i] - kChunkHeader;
        const uint64_t size_word = head_[i].size_word;
        if (size_word & kMmappedBit) {
          uint64_t before = 0;  // an mmap()ed chunk's offset into its mapping
          ReadRemoteWord(pid_, chunk, &before);
          skip.push_back({chunk - before, chunk + (size_word & ~7ull)});
          continue;
        }
        const Mapping* m = MappingAt(maps_, start_[i]);
        if (m && m->path == "[heap]") continue;  // skipped whole below
        uint64_t heap = start_[i] & ~(kArenaHeapBytes - 1);
        if (!skip.empty() && skip.back().start == heap) continue;
        skip.push_back({heap, heap + kArenaHeapBytes});
      } else if (const Mapping* m = MappingAt(maps_, start_[i])) {
        skip.push_back({m->start, m->end});
      }
    }
    // A stack below its thread's stack pointer is dead.
    for (const ScanThread& t : threads) {
      if (!t.has_regs) continue;
      uint64_t sp = StackPointer(t.regs) & ~7ull;
      if (const Mapping* m = MappingAt(maps_, sp)) skip.push_back({m->start, sp});
    }
    std::sort(skip.begin(), skip.end(), [](const Range& a, const Range& b) { return a.start < b.start; });

    std::vector<Range> roots;
    for (const Mapping& m : maps_) {
      if (!m.read || !m.write || m.device) continue;
      if (options_.glibc && m.path == "[heap]") continue;
      if (options_.skip_main_stack && m.path == "[stack]") continue;
      uint64_t at = m.start;
      for (const Range& s : skip) {
        if (s.end <= at) continue;
        if (s.start >= m.end) break;
        if (s.start > at) roots.push_back({at, s.start});
        at = std::max(at, s.end);
        if (at >= m.end) break;
      }
      if (at < m.end) roots.push_back({at, m.end});
    }
    return roots;
  }

  void ScanRoot(const Range& r) {
    for (uint64_t at = r.start; at < r.end;) {
      size_t len = static_cast<size_t>(std::min<uint64_t>(kWindow, r.end - at));
      ReadRemote(pid_, at, len, window_.data());
      root_bytes_ += len;
      const auto* w = reinterpret_cast<const uint64_t*>(window_.data());
      for (size_t k = 0; k < len / 8; k++) {
        uint64_t v = w[k];
        if (v >= lowest_ && v < highest_) Reach(v, Find(v), true);
      }
      at += len;
    }
  }

  // The block `p` points into, or -1.
  int64_t FindAny(uint64_t p) const {
    if (p < lowest_ || p >= highest_) return -1;
    auto it = std::upper_bound(start_.begin(), start_.end(), p);
    if (it == start_.begin()) return -1;
    size_t i = static_cast<size_t>(it - start_.begin()) - 1;
    // A block of 0 bytes counts as 1, so that a pointer to it reaches it.
    if (p >= start_[i] + std::max<uint64_t>(size_[i], 1)) return -1;
    return static_cast<int64_t>(i);
  }

  // Whether `p`, into block `i`, is glibc's pointer to the chunk after it (its arena keeps those:
  // bins, top): the allocator's, not the program's.
  bool NextChunk(uint64_t p, size_t i) const {
    if (!options_.glibc || p == start_[i]) return false;
    const uint64_t size_word = head_[i].size_word;
    return !(size_word & kMmappedBit) && p == start_[i] - kChunkHeader + (size_word & ~7ull);
  }

  int64_t Find(uint64_t p) const {
    int64_t i = FindAny(p);
    return i >= 0 && NextChunk(p, static_cast<size_t>(i)) ? -1 : i;
  }

  bool Has(uint32_t h) const { return options_.heuristics & (1u << h); }

  // Whether `p`, a readable file-backed address, looks like a vtable: the first non-null words
  // there point into executable file mappings, at least two of them.
  bool LooksLikeVtable(uint64_t p) const {
    const Mapping* m = MappingAt(maps_, p);
    if (!m || !m->file || !m->read) return false;
    uint64_t last = std::min<uint64_t>(p + kVtableWords * 8, m->end - 8);
    int functions = 0;
    for (uint64_t at = p; at <= last; at += 8) {
      uint64_t f;
      if (!ReadRemoteWord(pid_, at, &f)) return false;
      if (f == 0) continue;
      const Mapping* fm = MappingAt(maps_, f);
      if (!fm || !fm->file || !fm->exec) return false;
      if (++functions == 2) return true;
    }
    return false;
  }

  // A word of block `i` at `a`: its head when there, else read from the target.
  uint64_t WordOf(size_t i, uint64_t a) const {
    if (a >= start_[i] && a + 8 <= start_[i] + std::min<uint64_t>(size_[i], 24)) return head_[i].words[(a - start_[i]) / 8];
    uint64_t v = 0;
    ReadRemoteWord(pid_, a, &v);
    return v;
  }

  Heuristic HeuristicFor(uint64_t p, size_t i) const {
    const uint64_t start = start_[i], size = size_[i];
    // libstdc++'s old (COW) std::string: length, capacity, refcount, then the characters.
    if (Has(1) && p == start + 24 && size >= 16) {
      uint64_t capacity = WordOf(i, start + 8);
      if (24 + capacity + 1 == size && WordOf(i, start) <= capacity) return Heuristic::kStdString;
    }
    // A 64-bit length of the rest of the block before it (sqlite).
    if (Has(2) && p == start + 8 && size >= 8) {
      uint64_t length = WordOf(i, start);
      if (length > 0 && size - 8 == length) return Heuristic::kLength64;
    }
    // new[] of objects with a destructor: the count, then the objects.
    if (Has(3) && p == start + 8 && size >= 8) {
      uint64_t count = WordOf(i, start);
      if (count > 0 && (size - 8) % count == 0) return Heuristic::kNewArray;
    }
    // A second base class: a vtable pointer where it points, and one at the block's start.
    if (Has(4) && p % 8 == 0 && p + 8 <= start + size && size >= 8) {
      uint64_t inner = WordOf(i, p);
      if (inner % 8 == 0 && inner >= kPage) {
        uint64_t first = WordOf(i, start);
        if (first % 8 == 0 && first >= kPage && LooksLikeVtable(inner) && LooksLikeVtable(first))
          return Heuristic::kMultipleInheritance;
      }
    }
    return Heuristic::kNone;
  }

  // A pointer `p` into block `found` (-1: none), seen in a root (prior_definite) or in a block
  // being marked.
  void Reach(uint64_t p, int64_t found, bool prior_definite) {
    if (found < 0) return;
    size_t i = static_cast<size_t>(found);
    if (state_[i] == State::kReachable) {
      if (heuristic_[i] != Heuristic::kNone && p == start_[i]) heuristic_[i] = Heuristic::kNone;
      return;
    }
    bool via_start = p == start_[i];
    if (!via_start && options_.heuristics) {
      heuristic_[i] = HeuristicFor(p, i);
      via_start = heuristic_[i] != Heuristic::kNone;
    }
    if (via_start && prior_definite) {
      state_[i] = State::kReachable;
      Push(i);
    } else if (state_[i] == State::kUnreached) {
      state_[i] = State::kPossible;
      Push(i);
    }
  }

  // A block already waiting on the stack is not pushed again.
  void Push(size_t i) {
    if (pending_[i]) return;
    pending_[i] = true;
    stack_.push_back(static_cast<uint32_t>(i));
  }

  // A pointer into block `i` seen in lost block `from`, of the clique `leader` leads.
  void Claim(size_t i, size_t leader, size_t from) {
    if (state_[i] != State::kUnreached || i == leader) return;
    Push(i);
    owner_[i] = static_cast<uint32_t>(from);
    indirect_[leader] += size_[i] + indirect_[i];
    indirect_[i] = 0;
    state_[i] = State::kIndirect;
  }

  // Walks the edges of the blocks on the stack until it is empty; `leader` < 0 while marking
  // from the roots.
  void Drain(int64_t leader) {
    while (!stack_.empty()) {
      size_t i = stack_.back();
      stack_.pop_back();
      pending_[i] = false;
      scanned_blocks_++;
      bool definite = state_[i] != State::kPossible;
      for (size_t e = edge_begin_[i]; e < edge_begin_[i + 1]; e++) {
        const uint64_t p = edge_ptr_[e];
        const size_t to = edge_to_[e];
        if (NextChunk(p, to)) continue;
        if (leader < 0)
          Reach(p, static_cast<int64_t>(to), definite);
        else
          Claim(to, static_cast<size_t>(leader), i);
      }
    }
  }

  pid_t pid_;
  ScanOptions options_;
  size_t n_;
  std::vector<uint32_t> order_;  // sorted position -> input index
  std::vector<uint64_t> start_, size_;
  std::vector<State> state_;
  std::vector<Heuristic> heuristic_;
  std::vector<uint64_t> indirect_;
  std::vector<uint32_t> owner_;  // sorted position of the block whose flood claimed it
  std::vector<BlockHead> head_;
  // Block i's pointers to blocks: edge_ptr_ and edge_to_ (the block) from edge_begin_[i] to
  // edge_begin_[i + 1].
  std::vector<size_t> edge_begin_;
  std::vector<uint64_t> edge_ptr_;
  std::vector<uint32_t> edge_to_;
  std::vector<uint32_t> stack_;
  std::vector<bool> pending_;
  std::vector<Mapping> maps_;
  Buffer window_;
  uint64_t lowest_ = 1, highest_ = 0;
  uint64_t root_bytes_ = 0, heap_bytes_ = 0, scanned_blocks_ = 0;
};

}  // namespace

bool ScanHeap(pid_t pid, const std::vector<ScanBlock>& blocks, const std::vector<ScanThread>& threads,
              const ScanOptions& options, ScanResult* result, std::string* error) {
  Scanner scanner(pid, blocks, options);
  return scanner.Run(threads, result, error);
}

}  // namespace ebpf_leak
