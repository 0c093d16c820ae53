// Reads the kernel's table of outstanding blocks (`allocs`, bpf/alloc_table.h) in place: the map
// is mmap()able, so a million blocks are a memory scan, not a million map lookups.
//
// Mapped a window at a time, and only while it is read: the kernel maps a BPF map's pages all at
// once (remap_vmalloc_range), so the whole table mapped would count its size (~60 MB for a
// million blocks) in this process's RSS for as long as it stays mapped, snapshot or not.
#pragma once

#include <cstddef>
#include <cstdint>

#include "page_buffer.h"

namespace ebpf_leak {

class AllocTableReader {
 public:
  // Buckets for room for at least `max_allocations` blocks: a quarter more slots than that, as
  // two-choice buckets of 8 start to overflow at about 95% full.
  static uint32_t BucketsFor(uint64_t max_allocations);

  AllocTableReader() = default;
  AllocTableReader(const AllocTableReader&) = delete;
  AllocTableReader& operator=(const AllocTableReader&) = delete;

  // Reads the table of `map_fd` (`buckets` buckets; the fd stays the caller's). Checks that it
  // can be mapped. Returns 0 or an errno value.
  int Open(int map_fd, uint32_t buckets);
  void Close();
  bool IsOpen() const { return map_fd_ >= 0; }

  // A leak_block (bpf/leak.h) for every block in the table, or a leak_timed_block when
  // `timestamps`, into `out` (reserved here). Blocks come and go while it reads; each one read is
  // read whole (its key is read again after its value). Returns 0 or an errno value.
  int Read(bool timestamps, PageBuffer* out) const;

 private:
  int map_fd_ = -1;
  uint32_t buckets_ = 0;
};

}  // namespace ebpf_leak
