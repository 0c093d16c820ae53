// Which groups of buckets of the kernel's table of blocks (`allocs`) a block was ever put in: the
// `touched_groups` map of bpf/alloc_table.bpf.h, mapped here. Whoever reads the whole table skips
// the other groups, and whoever puts a block in a bucket flags its group first, as the BPF side
// does.
#pragma once

#include <cstddef>
#include <cstdint>

#include "abi/leak.h"

namespace ebpf_leak::process {

class TableGroups {
 public:
  // Groups of a table of `buckets` buckets: the map's max_entries.
  static uint32_t For(uint32_t buckets) {
    return (buckets + LEAK_TABLE_GROUP_BUCKETS - 1) / LEAK_TABLE_GROUP_BUCKETS;
  }

  TableGroups() = default;
  TableGroups(const TableGroups&) = delete;
  TableGroups& operator=(const TableGroups&) = delete;
  ~TableGroups() { Unmap(); }

  // Maps the flags of `fd` (the map, which stays the caller's) for a table of `buckets` buckets.
  // Returns 0 or an errno value.
  int Map(int fd, uint32_t buckets);
  void Unmap();

  // Whether a block was ever put in `bucket`'s group. Unmapped: every group counts as touched.
  bool Touched(uint32_t bucket) const {
    return flags_ == nullptr || __atomic_load_n(&flags_[bucket / LEAK_TABLE_GROUP_BUCKETS], __ATOMIC_ACQUIRE) != 0;
  }
  // Flags `bucket`'s group: before a key is published there.
  void Touch(uint32_t bucket) const {
    if (flags_ != nullptr && !Touched(bucket))
      __atomic_store_n(&flags_[bucket / LEAK_TABLE_GROUP_BUCKETS], 1, __ATOMIC_RELEASE);
  }
  // The first bucket of the first group after `bucket`'s.
  static uint32_t NextGroup(uint32_t bucket) {
    return (bucket / LEAK_TABLE_GROUP_BUCKETS + 1) * LEAK_TABLE_GROUP_BUCKETS;
  }
  // The first bucket (at most `buckets`) past the touched groups that follow `bucket`'s in a row.
  uint32_t RunEnd(uint32_t bucket, uint32_t buckets) const {
    uint32_t end = bucket;
    while (end < buckets && Touched(end)) end = NextGroup(end);
    return end < buckets ? end : buckets;
  }

 private:
  uint64_t* flags_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace ebpf_leak::process
