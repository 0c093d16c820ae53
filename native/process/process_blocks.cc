#include "process/process_blocks.h"

#include <bpf/bpf.h>
#include <sys/mman.h>
#include <unistd.h>

namespace ebpf_leak::process {
namespace {

// The two candidate buckets of a key: address_buckets() of bpf/alloc_table.bpf.h.
void KeyBuckets(uint64_t key, uint32_t buckets, uint32_t* first, uint32_t* second) {
  uint64_t h = (key ^ (key >> 29)) * 0x9e3779b97f4a7c15ULL;
  *first = static_cast<uint32_t>(((h >> 32) * static_cast<uint64_t>(buckets)) >> 32);
  *second = static_cast<uint32_t>(((h & 0xffffffffULL) * static_cast<uint64_t>(buckets)) >> 32);
}

int UsedSlots(const leak_bucket& b) {
  int n = 0;
  for (int i = 0; i < LEAK_BUCKET_SLOTS; i++) n += __atomic_load_n(&b.keys[i], __ATOMIC_RELAXED) != 0;
  return n;
}

bool Claim(leak_bucket* b, uint64_t key, const leak_slot& value) {
  for (int i = 0; i < LEAK_BUCKET_SLOTS; i++) {
    uint64_t expected = 0;
    if (__atomic_load_n(&b->keys[i], __ATOMIC_RELAXED) != 0) continue;
    if (!__atomic_compare_exchange_n(&b->keys[i], &expected, LEAK_SLOT_BUSY, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_RELAXED))
      continue;
    b->values[i] = value;
    __atomic_store_n(&b->keys[i], key, __ATOMIC_RELEASE);  // value first, then the key
    return true;
  }
  return false;
}

bool OfProcess(uint64_t key, uint64_t bits) {
  return key > LEAK_SLOT_BUSY && (key & ~LEAK_ADDRESS_MASK) == bits;
}

}  // namespace

void ProcessBlocks::Spilled(uint64_t bits, bool take, std::vector<std::pair<uint64_t, leak_slot>>* out) const {
  if (spill_fd_ < 0 || spilled_ == nullptr || __atomic_load_n(spilled_, __ATOMIC_ACQUIRE) <= 0) return;
  std::vector<uint64_t> keys;
  uint64_t key = 0, next = 0;
  for (bool first = true; bpf_map_get_next_key(spill_fd_, first ? nullptr : &key, &next) == 0; first = false) {
    key = next;
    if (OfProcess(key, bits)) keys.push_back(key);
  }
  for (uint64_t k : keys) {
    leak_slot slot;
    if (bpf_map_lookup_elem(spill_fd_, &k, &slot) != 0) continue;  // freed meanwhile
    if (take) {
      if (bpf_map_delete_elem(spill_fd_, &k) != 0) continue;
      __atomic_fetch_sub(spilled_, 1, __ATOMIC_ACQ_REL);
    }
    out->emplace_back(k, slot);
  }
}

leak_bucket* ProcessBlocks::Map(size_t* bytes) const {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  *bytes = (static_cast<size_t>(buckets_) * sizeof(leak_bucket) + page - 1) / page * page;
  void* p = mmap(nullptr, *bytes, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd_, 0);
  return p == MAP_FAILED ? nullptr : static_cast<leak_bucket*>(p);
}

int64_t ProcessBlocks::Copy(uint64_t from_bits, uint64_t to_bits) const {
  size_t bytes = 0;
  leak_bucket* table = Map(&bytes);
  if (table == nullptr) return -1;
  // The blocks to copy first: inserting while scanning could meet a copy again.
  std::vector<std::pair<uint64_t, leak_slot>> found;
  for (uint32_t b = 0; b < buckets_; b++) {
    if (!groups_->Touched(b)) {
      b = TableGroups::NextGroup(b) - 1;  // no block was ever in this group
      continue;
    }
    for (int i = 0; i < LEAK_BUCKET_SLOTS; i++) {
      uint64_t key = __atomic_load_n(&table[b].keys[i], __ATOMIC_ACQUIRE);
      if (OfProcess(key, from_bits)) found.emplace_back(key & LEAK_ADDRESS_MASK, table[b].values[i]);
    }
  }
  std::vector<std::pair<uint64_t, leak_slot>> spilled;
  Spilled(from_bits, false, &spilled);
  for (const auto& [key, value] : spilled) found.emplace_back(key & LEAK_ADDRESS_MASK, value);
  int64_t lost = 0;
  for (const auto& [address, value] : found) {
    uint64_t key = address | to_bits;
    uint32_t first, second;
    KeyBuckets(key, buckets_, &first, &second);
    if (UsedSlots(table[second]) < UsedSlots(table[first])) std::swap(first, second);
    // The group flagged first, as the BPF side does: a reader that skips it sees no key there.
    groups_->Touch(first);
    if (Claim(&table[first], key, value)) continue;
    groups_->Touch(second);
    if (Claim(&table[second], key, value)) continue;
    // Both buckets full: into the spill, counted first so that the program looks there.
    if (spill_fd_ >= 0 && spilled_ != nullptr) {
      __atomic_fetch_add(spilled_, 1, __ATOMIC_ACQ_REL);
      if (bpf_map_update_elem(spill_fd_, &key, &value, BPF_NOEXIST) == 0) continue;
      __atomic_fetch_sub(spilled_, 1, __ATOMIC_ACQ_REL);
    }
    lost++;
  }
  munmap(table, bytes);
  return lost;
}

int64_t ProcessBlocks::Take(uint64_t bits, std::vector<leak_block>* out) const {
  size_t bytes = 0;
  leak_bucket* table = Map(&bytes);
  if (table == nullptr) return -1;
  int64_t n = 0;
  for (uint32_t b = 0; b < buckets_; b++) {
    if (!groups_->Touched(b)) {
      b = TableGroups::NextGroup(b) - 1;  // no block was ever in this group
      continue;
    }
    for (int i = 0; i < LEAK_BUCKET_SLOTS; i++) {
      uint64_t key = __atomic_load_n(&table[b].keys[i], __ATOMIC_ACQUIRE);
      if (!OfProcess(key, bits)) continue;
      leak_slot slot = table[b].values[i];
      if (!__atomic_compare_exchange_n(&table[b].keys[i], &key, 0, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        continue;
      n++;
      if (out) out->push_back({key & LEAK_ADDRESS_MASK, slot.size_fn, slot.stack_id, slot.tid, slot.mark});
    }
  }
  munmap(table, bytes);
  std::vector<std::pair<uint64_t, leak_slot>> spilled;
  Spilled(bits, true, &spilled);
  for (const auto& [key, slot] : spilled) {
    n++;
    if (out) out->push_back({key & LEAK_ADDRESS_MASK, slot.size_fn, slot.stack_id, slot.tid, slot.mark});
  }
  return n;
}

}  // namespace ebpf_leak::process
