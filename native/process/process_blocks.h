// The blocks of one traced process in the kernel's table (`allocs`, bpf/alloc_table.bpf.h), edited
// from user space while that process is stopped: copied to a fork's child, taken out at an exec
// or an exit. Blocks of a process carry its index in the top bits of their key
// (bpf/traced_processes.bpf.h); `bits` below is that index << LEAK_PROCESS_SHIFT, 0 for a tracer
// that follows one process (then every block is the process's).
//
// Blocks whose two buckets were full are in the spill map (`spilled_allocs`), counted by the BPF
// program's `spilled_blocks`, which gates its lookups there: both are kept here too.
//
// Other processes keep allocating and freeing meanwhile: slots are claimed and released with the
// same compare-and-swap protocol as the BPF side, and only slots of the stopped process are
// written, except empty ones claimed for its child.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "abi/leak.h"
#include "process/table_groups.h"

namespace ebpf_leak::process {

class ProcessBlocks {
 public:
  // `map_fd`: the table map (the caller keeps it open); `buckets`: its max_entries; `groups`: the
  // flags of its groups, which outlive this; `spill_fd` and `spilled`: the spill map and its
  // count of blocks (the BPF program's, mapped), or -1 and nullptr.
  ProcessBlocks(int map_fd, uint32_t buckets, const TableGroups* groups, int spill_fd = -1, int64_t* spilled = nullptr)
      : map_fd_(map_fd), buckets_(buckets), groups_(groups), spill_fd_(spill_fd), spilled_(spilled) {}

  // Copies every block of `from_bits` to `to_bits`. Returns the blocks that found no room.
  int64_t Copy(uint64_t from_bits, uint64_t to_bits) const;
  // Removes every block of `bits`; appends them to `out` (addresses without the bits) if given.
  // Returns how many, or -1 when the table cannot be mapped.
  int64_t Take(uint64_t bits, std::vector<leak_block>* out) const;

 private:
  leak_bucket* Map(size_t* bytes) const;
  // The spilled blocks of `bits`, taken out of the spill map when `take`.
  void Spilled(uint64_t bits, bool take, std::vector<std::pair<uint64_t, leak_slot>>* out) const;

  int map_fd_;
  uint32_t buckets_;
  const TableGroups* groups_;
  int spill_fd_;
  int64_t* spilled_;
};

}  // namespace ebpf_leak::process
