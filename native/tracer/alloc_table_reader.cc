#include "tracer/alloc_table_reader.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include <bpf/bpf.h>

#include "abi/leak.h"
#include "addon/page_buffer.h"

namespace ebpf_leak {

namespace {

// Bytes of the table mapped at once: a few hundred pages, so mapping costs few system calls and
// adds little to RSS while a read runs.
constexpr size_t kWindowBytes = 2u << 20;
// Each window must hold a whole bucket past its first page, whatever the page size (to 64 KiB).
static_assert(kWindowBytes >= 65536 + sizeof(leak_bucket), "a window holds a whole bucket");

size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

void AppendBlock(uint64_t address, const leak_slot& slot, bool timestamps, PageBuffer* out) {
  leak_timed_block entry{};
  entry.block.address = address;
  entry.block.size_fn = slot.size_fn;
  entry.block.stack_id = slot.stack_id;
  entry.block.tid = slot.tid;
  entry.block.mark = slot.mark;
  entry.timestamp_ns = slot.timestamp_ns;
  size_t bytes = timestamps ? sizeof(leak_timed_block) : sizeof(leak_block);
  memcpy(out->Append(bytes), &entry, bytes);
}

// Appends the blocks of `buckets` buckets from `first`.
void ReadBuckets(const leak_bucket* first, size_t buckets, uint64_t mask, bool timestamps, PageBuffer* out) {
  for (size_t b = 0; b < buckets; b++) {
    const leak_bucket& bucket = first[b];
    for (int i = 0; i < LEAK_BUCKET_SLOTS; i++) {
      // The BPF side writes the value, then publishes the key (bpf/alloc_table.bpf.h): acquire.
      uint64_t key = __atomic_load_n(&bucket.keys[i], __ATOMIC_ACQUIRE);
      if (key == 0 || key == LEAK_SLOT_BUSY) continue;
      leak_slot slot;
      memcpy(&slot, &bucket.values[i], sizeof(slot));
      __atomic_thread_fence(__ATOMIC_ACQUIRE);
      if (__atomic_load_n(&bucket.keys[i], __ATOMIC_RELAXED) != key) continue;  // freed meanwhile
      AppendBlock(key & mask, slot, timestamps, out);
    }
  }
}

}  // namespace

uint32_t AllocTableReader::BucketsFor(uint64_t max_allocations) {
  uint64_t slots = max_allocations + max_allocations / 4;
  if (slots < 8 * LEAK_BUCKET_SLOTS) slots = 8 * LEAK_BUCKET_SLOTS;  // two choices need a few
  return static_cast<uint32_t>((slots + LEAK_BUCKET_SLOTS - 1) / LEAK_BUCKET_SLOTS);
}

uint32_t AllocTableReader::SpillEntriesFor(uint64_t max_allocations) {
  return static_cast<uint32_t>(std::max<uint64_t>(16, max_allocations / 2));
}

int AllocTableReader::Open(int map_fd, uint32_t buckets, int groups_fd, int spill_fd, uint32_t spill_entries) {
  Close();
  // An array map's values start at offset 0 of its mapping, each rounded up to 8 bytes.
  static_assert(sizeof(leak_bucket) % 8 == 0, "bucket stride");
  static_assert(offsetof(leak_timed_block, block) == 0, "a timed block starts as a block does");
  void* p = mmap(nullptr, PageSize(), PROT_READ, MAP_SHARED, map_fd, 0);
  if (p == MAP_FAILED) return errno;
  munmap(p, PageSize());
  if (int e = groups_.Map(groups_fd, buckets)) return e;
  map_fd_ = map_fd;
  buckets_ = buckets;
  spill_fd_ = spill_fd;
  spill_entries_ = spill_entries;
  return 0;
}

void AllocTableReader::Close() {
  groups_.Unmap();
  map_fd_ = -1;
  buckets_ = 0;
  spill_fd_ = -1;
  spill_entries_ = 0;
}

int AllocTableReader::Read(bool timestamps, PageBuffer* out) const {
  if (!IsOpen()) return EBADF;
  // Room for every slot: the output never moves, and costs RSS only for the blocks written.
  size_t record = timestamps ? sizeof(leak_timed_block) : sizeof(leak_block);
  size_t most = static_cast<size_t>(buckets_) * LEAK_BUCKET_SLOTS + spill_entries_;
  if (int e = out->Reserve(most * record)) return e;
  const size_t page = PageSize();
  const size_t table_bytes = static_cast<size_t>(buckets_) * sizeof(leak_bucket);
  const size_t mappable = (table_bytes + page - 1) / page * page;
  // Windows start on a page boundary, so a bucket may straddle two: each window reads the
  // buckets that end inside it, and the next one starts at the page of the first it left. A
  // window covers touched groups only, and ends at the page its last bucket ends in.
  for (size_t first = 0; first < buckets_;) {
    if (!groups_.Touched(first)) {
      first = process::TableGroups::NextGroup(first);
      continue;
    }
    size_t begin = first * sizeof(leak_bucket) / page * page;
    size_t limit = std::min(mappable, begin + kWindowBytes);
    size_t last = std::min<size_t>(groups_.RunEnd(first, buckets_), limit / sizeof(leak_bucket));
    size_t end = std::min(mappable, (last * sizeof(leak_bucket) + page - 1) / page * page);
    void* p = mmap(nullptr, end - begin, PROT_READ, MAP_SHARED, map_fd_, static_cast<off_t>(begin));
    if (p == MAP_FAILED) return errno;
    const auto* at = static_cast<const uint8_t*>(p) + (first * sizeof(leak_bucket) - begin);
    ReadBuckets(reinterpret_cast<const leak_bucket*>(at), last - first, address_mask_, timestamps, out);
    munmap(p, end - begin);
    first = last;
  }
  return ReadSpill(timestamps, out);
}

// In batches, which walk the hash map's buckets in order: a key-by-key walk starts over when
// its last key is freed meanwhile.
int AllocTableReader::ReadSpill(bool timestamps, PageBuffer* out) const {
  constexpr uint32_t kBatch = 4096;
  std::vector<uint64_t> keys(kBatch);
  std::vector<leak_slot> values(kBatch);
  uint64_t cursor = 0;
  bool first = true;
  for (uint32_t read = 0; read < spill_entries_;) {
    uint32_t count = std::min(kBatch, spill_entries_ - read);
    int err = bpf_map_lookup_batch(spill_fd_, first ? nullptr : &cursor, &cursor, keys.data(), values.data(),
                                   &count, nullptr);
    first = false;
    int e = err ? errno : 0;
    for (uint32_t i = 0; i < count; i++) AppendBlock(keys[i] & address_mask_, values[i], timestamps, out);
    read += count;
    if (e == ENOENT) return 0;  // the end
    if (e) return e;
  }
  return 0;
}

}  // namespace ebpf_leak
