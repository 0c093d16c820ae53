#include "tracer/event_slots.h"
#include "addon/errors.h"

#include "addon/page_buffer.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace ebpf_leak {

void EventSlots::Create(Napi::Env env, int count, size_t bytes) {
  slots_ = std::make_unique<Slot[]>(count);
  count_ = count;
  bytes_ = bytes;
  // Fresh pages, committed only when the poll thread first writes them: no zeroing here on the
  // JS thread (calloc from the heap would clear every byte), and the slots a trace never needs
  // cost nothing. Each ArrayBuffer unmaps its own part when collected.
  void* region = mmap(nullptr, count * bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) throw Napi::Error::New(env, "cannot map the event buffers: " + ErrnoText(errno));
  for (int i = 0; i < count; i++) {
    auto* data = static_cast<uint8_t*>(region) + i * bytes;
    Napi::ArrayBuffer buffer = PagesAsArrayBuffer(env, data, bytes, bytes);
    slots_[i].data = data;
    slots_[i].buffer = Napi::Persistent(buffer);
  }
}

Napi::Array EventSlots::ToArray(Napi::Env env) const {
  Napi::Array list = Napi::Array::New(env, count_);
  for (int i = 0; i < count_; i++) list.Set(i, slots_[i].buffer.Value());
  return list;
}

void EventSlots::Reset() {
  for (int i = 0; i < count_; i++) slots_[i].buffer.Reset();
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
