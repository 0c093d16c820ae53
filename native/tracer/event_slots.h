// The buffers the poll thread writes events batches into: a few ArrayBuffers made once, when the
// tracer is made, and reused. A fresh 1 MB ArrayBuffer per batch (tens a second) counted as
// external memory each time and made V8 run full collections every few hundred milliseconds,
// whose parallel phases held the event loop for 5-10 ms on a busy machine.
//
// A slot is either the poll thread's (being filled) or JS's (posted, until eventsDelivered()).
// This is their bookkeeping; the ArrayBuffers over them are the Tracer's (native/tracer/tracer.cc).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace ebpf_leak {

class EventSlots {
 public:
  // JS thread, once: `count` slots of `bytes` each, one after the other from `region`. None at
  // all (events off) until then.
  void Init(uint8_t* region, int count, size_t bytes);
  int count() const { return count_; }
  // Poll thread: a slot JS does not have, or -1 when JS has them all.
  int Acquire() const;
  uint8_t* data(int slot) const { return slots_[slot].data; }
  size_t bytes() const { return bytes_; }
  // Poll thread, when posting slot `slot` to JS; and back when the post failed.
  void GiveToJs(int slot) { slots_[slot].with_js.store(true, std::memory_order_release); }
  // JS thread (eventsDelivered(slot)): the slot can be written again.
  void Return(int slot);

 private:
  struct Slot {
    uint8_t* data = nullptr;
    std::atomic<bool> with_js{false};
  };
  std::unique_ptr<Slot[]> slots_;
  int count_ = 0;
  size_t bytes_ = 0;
};

}  // namespace ebpf_leak
