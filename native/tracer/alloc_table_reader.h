// Reads the kernel's table of outstanding blocks (`allocs`, bpf/alloc_table.bpf.h) in place: the map
// is mmap()able, so a million blocks are a memory scan, not a million map lookups.
//
// Mapped a window at a time, and only while it is read: the kernel maps a BPF map's pages all at
// once (remap_vmalloc_range), so the whole table mapped would count its size (~60 MB for a
// million blocks) in this process's RSS for as long as it stays mapped, snapshot or not. Only the
// groups of buckets a block was ever put in are read (process/table_groups.h): a read touches
// no page of the rest, where a whole read took 25-30 ms on a VM whatever the count of blocks.
#pragma once

#include <cstddef>
#include <cstdint>

#include "abi/leak.h"
#include "process/table_groups.h"

namespace ebpf_leak {

class PageBuffer;  // native/addon/page_buffer.h

class AllocTableReader {
 public:
  // Buckets for `max_allocations` blocks: a quarter more slots than that. Two-choice buckets of 8
  // fill to 55-60% under churn before a block finds both of its full (bpf/alloc_table.bpf.h); the
  // spill takes those.
  static uint32_t BucketsFor(uint64_t max_allocations);
  // Room in the spill (`spilled_allocs`): half of `max_allocations`, so that the table holds at
  // least a quarter more blocks than that however they come and go. A hash map without
  // preallocation: its elements cost memory only once used.
  static uint32_t SpillEntriesFor(uint64_t max_allocations);

  AllocTableReader() = default;
  AllocTableReader(const AllocTableReader&) = delete;
  AllocTableReader& operator=(const AllocTableReader&) = delete;

  // Reads the table of `map_fd` (`buckets` buckets), whose touched groups are flagged in
  // `groups_fd`, and the spill of `spill_fd` (room for `spill_entries`); the fds stay the
  // caller's. Checks that the table can be mapped, and maps the flags. Returns 0 or an errno
  // value.
  int Open(int map_fd, uint32_t buckets, int groups_fd, int spill_fd, uint32_t spill_entries);
  void Close();
  bool IsOpen() const { return map_fd_ >= 0; }
  // Blocks are read with the process index of their key (bpf/traced_processes.bpf.h) cleared: one
  // process, whose images each have an index.
  void StripProcessBits(bool on) { address_mask_ = on ? LEAK_ADDRESS_MASK : ~0ULL; }
  // The flags of the table's groups, for whoever else reads or writes the table.
  const process::TableGroups& Groups() const { return groups_; }

  // A leak_block (bpf/abi/leak.h) for every block in the table, or a leak_timed_block when
  // `timestamps`, into `out` (reserved here). Blocks come and go while it reads; each one read is
  // read whole (its key is read again after its value). Returns 0 or an errno value.
  int Read(bool timestamps, PageBuffer* out) const;

 private:
  int ReadSpill(bool timestamps, PageBuffer* out) const;

  int map_fd_ = -1;
  uint32_t buckets_ = 0;
  process::TableGroups groups_;
  int spill_fd_ = -1;
  uint32_t spill_entries_ = 0;
  uint64_t address_mask_ = ~0ULL;
};

}  // namespace ebpf_leak
