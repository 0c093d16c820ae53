// Splits the blocks still allocated in a stopped process into memcheck's four kinds by scanning
// its memory for pointers, with memcheck's rules (valgrind's LEAK SUMMARY is the oracle):
//  - roots: every readable and writable mapping that is not the allocator's (its arenas, its
//    mmap()ed chunks) nor a device; a thread's stack only from its stack pointer up; the
//    general-purpose registers of the threads we hold (not at exit);
//  - a block reached through a pointer to its start from a root or a reachable block is
//    reachable; through a pointer into its middle, possibly lost, unless one of the heuristics
//    (stdstring, length64, newarray, multipleinheritance) explains that pointer; anything reached
//    from a possibly lost block is possibly lost;
//  - of the blocks nothing reaches, taken in address order, each one still unclaimed leads a
//    clique: it is definitely lost, and the unclaimed blocks reached from it (through any
//    pointer, start or interior) are indirectly lost, their bytes counted to the leader. Each
//    indirectly lost block keeps its owner: the lost block whose words reached it in that flood
//    (valgrind's clique tree), so that hiding a lost block can hide what is lost through it.
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ebpf_leak {

// A block's kind, as reported: valgrind's --show-leak-kinds vocabulary.
enum class LeakKind : uint8_t { kDefinite = 0, kIndirect = 1, kPossible = 2, kReachable = 3 };

// Interior pointers memcheck's default --leak-check-heuristics accept as reaching a block.
enum class Heuristic : uint8_t { kNone = 0, kStdString = 1, kLength64 = 2, kNewArray = 3, kMultipleInheritance = 4 };

constexpr uint32_t kNoOwner = 0xffffffffu;

struct ScanBlock {
  uint64_t address = 0;
  uint64_t size = 0;
};

struct ScanThread {
  pid_t tid = 0;
  bool has_regs = false;  // stopped by us: its registers and stack pointer are known
  // Its general-purpose registers are roots. Not for a thread in exit_group(): memcheck checks
  // after every thread is gone, and counts no register then.
  bool regs_are_roots = true;
  user_regs_struct regs{};  // without them, its whole stack is read
};

struct ScanOptions {
  // The blocks come from glibc's malloc: its arenas are found from the blocks' chunk headers,
  // and the arena's own pointers to the chunk after a block (bins, top) are not the program's.
  bool glibc = true;
  // Bitmask of (1 << Heuristic) to use; memcheck's default is all four.
  uint32_t heuristics = 0x1e;
  // The first thread ended without a stop where its stack pointer could be read: its stack
  // ([stack]) is no root rather than one read whole, dead slots and all.
  bool skip_main_stack = false;
};

struct ScanStats {
  uint64_t root_bytes = 0;   // bytes of roots scanned
  uint64_t heap_bytes = 0;   // bytes of blocks copied
  uint64_t scanned_blocks = 0;
  uint32_t threads = 0;
  uint32_t threads_with_regs = 0;
  uint64_t read_ns = 0;      // copying the target's memory
  uint64_t mark_ns = 0;      // the graph walk
};

struct ScanResult {
  // Per input block, in the input's order.
  std::vector<uint8_t> kind;       // LeakKind
  std::vector<uint8_t> heuristic;  // Heuristic that made it reachable, or kNone
  std::vector<uint64_t> indirect;  // for a definitely lost block: bytes of its clique's others
  // For an indirectly lost block: the input index of the lost block that reached it first
  // (following owners ends at a definitely lost one); kNoOwner for the others.
  std::vector<uint32_t> owner;
  // Every pointer from a lost block to another lost block, as (from, to) input indices, each
  // pair once: a block owned by one lost block may be reached from others too.
  std::vector<uint32_t> lost_edges;
  ScanStats stats;
};

// Scans `pid` (every thread stopped; `threads` are those we hold, with registers). False with
// `error` when the process cannot be read.
bool ScanHeap(pid_t pid, const std::vector<ScanBlock>& blocks, const std::vector<ScanThread>& threads,
              const ScanOptions& options, ScanResult* result, std::string* error);

}  // namespace ebpf_leak
