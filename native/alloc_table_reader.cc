#include "alloc_table_reader.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "leak.h"

namespace ebpf_leak {

uint32_t AllocTableReader::BucketsFor(uint64_t max_allocations) {
  uint64_t slots = max_allocations + max_allocations / 4;
  if (slots < 8 * LEAK_BUCKET_SLOTS) slots = 8 * LEAK_BUCKET_SLOTS;  // two choices need a few
  return static_cast<uint32_t>((slots + LEAK_BUCKET_SLOTS - 1) / LEAK_BUCKET_SLOTS);
}

int AllocTableReader::Open(int map_fd, uint32_t buckets) {
  Close();
  // An array map's values start at offset 0 of its mapping, each rounded up to 8 bytes.
  static_assert(sizeof(leak_bucket) % 8 == 0, "bucket stride");
  size_t length = static_cast<size_t>(buckets) * sizeof(leak_bucket);
  void* p = mmap(nullptr, length, PROT_READ, MAP_SHARED, map_fd, 0);
  if (p == MAP_FAILED) return errno;
  base_ = static_cast<const uint8_t*>(p);
  length_ = length;
  buckets_ = buckets;
  return 0;
}

void AllocTableReader::Close() {
  if (base_ != nullptr) munmap(const_cast<uint8_t*>(base_), length_);
  base_ = nullptr;
  length_ = 0;
  buckets_ = 0;
}

void AllocTableReader::Append(std::vector<uint8_t>* out) const {
  const auto* buckets = reinterpret_cast<const leak_bucket*>(base_);
  // Counted first, so the buffer grows once (a million blocks are 56 MB).
  size_t used = 0;
  for (uint32_t b = 0; b < buckets_; b++)
    for (int i = 0; i < LEAK_BUCKET_SLOTS; i++)
      used += __atomic_load_n(&buckets[b].keys[i], __ATOMIC_RELAXED) > LEAK_SLOT_BUSY;
  out->reserve(out->size() + (used + used / 16) * sizeof(leak_snapshot_entry));
  for (uint32_t b = 0; b < buckets_; b++) {
    const leak_bucket& bucket = buckets[b];
    for (int i = 0; i < LEAK_BUCKET_SLOTS; i++) {
      // The BPF side writes the value, then publishes the key (bpf/alloc_table.h): acquire.
      uint64_t key = __atomic_load_n(&bucket.keys[i], __ATOMIC_ACQUIRE);
      if (key == 0 || key == LEAK_SLOT_BUSY) continue;
      leak_slot slot;
      memcpy(&slot, &bucket.values[i], sizeof(slot));
      __atomic_thread_fence(__ATOMIC_ACQUIRE);
      if (__atomic_load_n(&bucket.keys[i], __ATOMIC_RELAXED) != key) continue;  // freed meanwhile
      leak_snapshot_entry entry{};
      entry.address = key;
      entry.alloc.size = slot.size_fn & LEAK_SIZE_MASK;
      entry.alloc.fn = slot.size_fn >> LEAK_SIZE_BITS;
      entry.alloc.timestamp_ns = slot.timestamp_ns;
      entry.alloc.tid = slot.tid;
      entry.alloc.stack_id = slot.stack_id;
      entry.alloc.mark = slot.mark;
      size_t old = out->size();
      out->resize(old + sizeof(entry));
      memcpy(out->data() + old, &entry, sizeof(entry));
    }
  }
}

}  // namespace ebpf_leak
