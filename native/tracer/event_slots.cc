#include "tracer/event_slots.h"

namespace ebpf_leak {

void EventSlots::Init(uint8_t* region, int count, size_t bytes) {
  slots_ = std::make_unique<Slot[]>(count);
  count_ = count;
  bytes_ = bytes;
  for (int i = 0; i < count; i++) slots_[i].data = region + i * bytes;
}

int EventSlots::Acquire() const {
  for (int i = 0; i < count_; i++)
    if (!slots_[i].with_js.load(std::memory_order_acquire)) return i;
  return -1;
}

void EventSlots::Return(int slot) {
  if (slot >= 0 && slot < count_) slots_[slot].with_js.store(false, std::memory_order_release);
}

}  // namespace ebpf_leak
