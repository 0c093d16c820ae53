#include "heap_scan.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

#include "target_memory.h"

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
// Bytes of a root read at once.
constexpr size_t kRootWindow = 1u << 20;
// Blocks closer than this share one copy of the heap.
constexpr uint64_t kSpanGap = 64 * 1024;
constexpr int kVtableWords = 20;

enum class State : uint8_t { kUnreached, kIndirect, kPossible, kReachable };

// A copy of the target's memory that an anonymous mapping holds, so that a gigabyte is not
// zeroed before it is overwritten.
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : data_(o.data_), size_(o.size_) { o.data_ = nullptr, o.size_ = 0; }
  ~Buffer() {
    if (data_) munmap(data_, size_);
  }
  bool Allocate(size_t size) {
    size_ = (size + kPage - 1) / kPage * kPage;
    void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      size_ = 0;
      return false;
    }
    data_ = static_cast<uint8_t*>(p);
    return true;
  }
  uint8_t* data() const { return data_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

struct Span {
  uint64_t base = 0, end = 0;
  Buffer copy;
};

struct Range {
  uint64_t start, end;
};

class Scanner {
 public:
  Scanner(pid_t pid, const std::vector<ScanBlock>& blocks, const ScanOptions& options)
      : pid_(pid), options_(options), n_(blocks.size()) {
    order_.resize(n_);
    std::iota(order_.begin(), order_.end(), 0u);
    std::sort(order_.begin(), order_.end(),
              [&](uint32_t a, uint32_t b) { return blocks[a].address < blocks[b].address; });
    start_.resize(n_);
    size_.resize(n_);
    for (size_t i = 0; i < n_; i++) {
      start_[i] = blocks[order_[i]].address;
      size_[i] = blocks[order_[i]].size;
    }
    state_.assign(n_, State::kUnreached);
    heuristic_.assign(n_, Heuristic::kNone);
    indirect_.assign(n_, 0);
    data_.assign(n_, nullptr);
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
    CopyHeap();
    std::vector<Range> roots = Roots(threads);
    result->stats.read_ns = NsSince(t0);
    auto t1 = Clock::now();

    for (const Range& r : roots) ScanRoot(r);
    for (const ScanThread& t : threads) {
      result->stats.threads++;
      if (!t.has_regs || !t.regs_are_roots) continue;
      result->stats.threads_with_regs++;
      const user_regs_struct& g = t.regs;
      for (uint64_t v : {g.rax, g.rbx, g.rcx, g.rdx, g.rsi, g.rdi, g.rbp, g.rsp, g.r8, g.r9, g.r10, g.r11,
                         g.r12, g.r13, g.r14, g.r15})
        Reach(v, /*prior_definite=*/true);
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
    for (size_t i = 0; i < n_; i++) {
      LeakKind k = state_[i] == State::kReachable  ? LeakKind::kReachable
                   : state_[i] == State::kPossible ? LeakKind::kPossible
                   : state_[i] == State::kIndirect ? LeakKind::kIndirect
                                                   : LeakKind::kDefinite;
      result->kind[order_[i]] = static_cast<uint8_t>(k);
      result->heuristic[order_[i]] = static_cast<uint8_t>(heuristic_[i]);
      result->indirect[order_[i]] = state_[i] == State::kUnreached ? indirect_[i] : 0;
    }
    result->stats.root_bytes = root_bytes_;
    result->stats.heap_bytes = heap_bytes_;
    result->stats.scanned_blocks = scanned_blocks_;
    return true;
  }

 private:
  // One copy per run of nearby blocks, from the chunk header of the first.
  void CopyHeap() {
    size_t i = 0;
    while (i < n_) {
      Span span;
      span.base = start_[i] >= kChunkHeader ? start_[i] - kChunkHeader : 0;
      span.end = start_[i] + size_[i];
      size_t j = i + 1;
      while (j < n_ && start_[j] - kChunkHeader <= span.end + kSpanGap) {
        span.end = std::max(span.end, start_[j] + size_[j]);
        j++;
      }
      span.end = (span.end + 7) / 8 * 8;
      if (span.copy.Allocate(span.end - span.base)) {
        heap_bytes_ += span.end - span.base;
        ReadRemote(pid_, span.base, span.end - span.base, span.copy.data());
        for (size_t k = i; k < j; k++) data_[k] = span.copy.data() + (start_[k] - span.base);
      }
      spans_.push_back(std::move(span));
      i = j;
    }
  }

  // A word of a block's copy (or of its chunk header), or 0 when outside the copy.
  uint64_t BlockWord(size_t i, int64_t offset) const {
    if (!data_[i]) return 0;
    uint64_t v;
    memcpy(&v, data_[i] + offset, sizeof v);
    return v;
  }

  std::vector<Range> Roots(const std::vector<ScanThread>& threads) {
    std::vector<Range> skip;
    // The allocator's memory is not a root: its arenas hold its own pointers to chunks.
    for (size_t i = 0; i < n_; i++) {
      if (options_.glibc && data_[i]) {
        uint64_t chunk = start_[i] - kChunkHeader;
        uint64_t size_word = BlockWord(i, -8);
        if (size_word & kMmappedBit) {
          uint64_t before = BlockWord(i, -16);  // an mmap()ed chunk's offset into its mapping
          skip.push_back({chunk - before, chunk + (size_word & ~7ull)});
          continue;
        }
        const Mapping* m = MappingAt(maps_, start_[i]);
        if (m && m->path == "[heap]") continue;  // skipped whole below
        uint64_t heap = start_[i] & ~(kArenaHeapBytes - 1);
        skip.push_back({heap, heap + kArenaHeapBytes});
      } else if (const Mapping* m = MappingAt(maps_, start_[i])) {
        skip.push_back({m->start, m->end});
      }
    }
    for (const ScanThread& t : threads) {
      if (!t.has_regs) continue;
      uint64_t sp = t.regs.rsp & ~7ull;
      if (const Mapping* m = MappingAt(maps_, sp)) skip.push_back({m->start, sp});
    }
    std::sort(skip.begin(), skip.end(), [](const Range& a, const Range& b) { return a.start < b.start; });

    std::vector<Range> roots;
    for (const Mapping& m : maps_) {
      if (!m.read || !m.write || m.device) continue;
      if (options_.glibc && m.path == "[heap]") continue;
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
    if (!window_.data() && !window_.Allocate(kRootWindow)) return;
    for (uint64_t at = r.start; at < r.end;) {
      size_t len = static_cast<size_t>(std::min<uint64_t>(kRootWindow, r.end - at));
      ReadRemote(pid_, at, len, window_.data());
      root_bytes_ += len;
      const auto* w = reinterpret_cast<const uint64_t*>(window_.data());
      for (size_t k = 0; k < len / 8; k++) {
        uint64_t v = w[k];
        if (v >= lowest_ && v < highest_) Reach(v, true);
      }
      at += len;
    }
  }

  // The block `p` points into, or -1. Pointers to the chunk after a block (glibc's arena keeps
  // those: bins, top) are the allocator's, not the program's.
  int64_t Find(uint64_t p) const {
    if (p < lowest_ || p >= highest_) return -1;
    auto it = std::upper_bound(start_.begin(), start_.end(), p);
    if (it == start_.begin()) return -1;
    size_t i = static_cast<size_t>(it - start_.begin()) - 1;
    // A block of 0 bytes counts as 1, so that a pointer to it reaches it.
    if (p >= start_[i] + std::max<uint64_t>(size_[i], 1)) return -1;
    if (options_.glibc && p != start_[i]) {
      uint64_t size_word = BlockWord(i, -8);
      if (!(size_word & kMmappedBit) && p == start_[i] - kChunkHeader + (size_word & ~7ull)) return -1;
    }
    return static_cast<int64_t>(i);
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

  Heuristic HeuristicFor(uint64_t p, size_t i) const {
    const uint64_t start = start_[i], size = size_[i];
    if (!data_[i]) return Heuristic::kNone;
    auto word_at = [&](uint64_t a) { return BlockWord(i, static_cast<int64_t>(a - start)); };
    // libstdc++'s old (COW) std::string: length, capacity, refcount, then the characters.
    if (Has(1) && p == start + 24 && size >= 16) {
      uint64_t capacity = word_at(start + 8);
      if (24 + capacity + 1 == size && word_at(start) <= capacity) return Heuristic::kStdString;
    }
    // A 64-bit length of the rest of the block before it (sqlite).
    if (Has(2) && p == start + 8 && size >= 8) {
      uint64_t length = word_at(start);
      if (length > 0 && size - 8 == length) return Heuristic::kLength64;
    }
    // new[] of objects with a destructor: the count, then the objects.
    if (Has(3) && p == start + 8 && size >= 8) {
      uint64_t count = word_at(start);
      if (count > 0 && (size - 8) % count == 0) return Heuristic::kNewArray;
    }
    // A second base class: a vtable pointer where it points, and one at the block's start.
    if (Has(4) && p % 8 == 0 && p + 8 <= start + size && size >= 8) {
      uint64_t inner = word_at(p);
      if (inner % 8 == 0 && inner >= kPage) {
        uint64_t first = word_at(start);
        if (first % 8 == 0 && first >= kPage && LooksLikeVtable(inner) && LooksLikeVtable(first))
          return Heuristic::kMultipleInheritance;
      }
    }
    return Heuristic::kNone;
  }

  // A pointer seen in a root (prior_definite) or in a block being marked.
  void Reach(uint64_t p, bool prior_definite) {
    int64_t found = Find(p);
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

  // A pointer seen in a lost block of clique `leader`.
  void Claim(uint64_t p, size_t leader) {
    int64_t found = Find(p);
    if (found < 0) return;
    size_t i = static_cast<size_t>(found);
    if (state_[i] != State::kUnreached || i == leader) return;
    Push(i);
    indirect_[leader] += size_[i] + indirect_[i];
    indirect_[i] = 0;
    state_[i] = State::kIndirect;
  }

  // Scans the blocks on the stack until it is empty; `leader` < 0 while marking from the roots.
  void Drain(int64_t leader) {
    while (!stack_.empty()) {
      size_t i = stack_.back();
      stack_.pop_back();
      pending_[i] = false;
      scanned_blocks_++;
      if (!data_[i]) continue;
      bool definite = state_[i] != State::kPossible;
      // Whole words of the block only: a pointer is 8-byte aligned, and the block starts aligned.
      const uint8_t* d = data_[i];
      size_t words = static_cast<size_t>(size_[i] / 8);
      for (size_t k = 0; k < words; k++) {
        uint64_t v;
        memcpy(&v, d + k * 8, sizeof v);
        if (v < lowest_ || v >= highest_) continue;
        if (leader < 0)
          Reach(v, definite);
        else
          Claim(v, static_cast<size_t>(leader));
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
  std::vector<const uint8_t*> data_;
  std::vector<uint32_t> stack_;
  std::vector<bool> pending_;
  std::vector<Span> spans_;
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
