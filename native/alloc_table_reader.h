// Reads the kernel's table of outstanding blocks (`allocs`, bpf/alloc_table.h) in place: the map
// is mmap()ed, so a million blocks are a memory scan, not a million map lookups.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ebpf_leak {

class AllocTableReader {
 public:
  // Buckets for room for at least `max_allocations` blocks: a quarter more slots than that, as
  // two-choice buckets of 8 start to overflow at about 95% full.
  static uint32_t BucketsFor(uint64_t max_allocations);

  AllocTableReader() = default;
  AllocTableReader(const AllocTableReader&) = delete;
  AllocTableReader& operator=(const AllocTableReader&) = delete;
  ~AllocTableReader() { Close(); }

  // Maps the table of `map_fd` (`buckets` buckets) read-only. Returns 0 or an errno value.
  int Open(int map_fd, uint32_t buckets);
  void Close();
  bool IsOpen() const { return base_ != nullptr; }

  // Appends a leak_snapshot_entry (bpf/leak.h) for every block in the table. Blocks come and go
  // while it reads; each one read is read whole (its key is read again after its value).
  void Append(std::vector<uint8_t>* out) const;

 private:
  const uint8_t* base_ = nullptr;
  size_t length_ = 0;
  uint32_t buckets_ = 0;
};

}  // namespace ebpf_leak
