// A buffer of pages of its own (an anonymous mapping) for the large results handed to JS: a
// million-block snapshot is 30-40 MB. Reserved at its largest possible size up front, which
// costs address space only (a page counts in RSS once written), so it never grows by copying;
// the unwritten tail is returned when the buffer is handed over, and the rest when JS drops it (by
// a thread of its own when it is large: unmapping 40 MB held the event loop 3-5 ms).
// From malloc, a freed buffer of that size could stay in a thread's arena, or come back there
// once glibc raised its mmap threshold past it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ebpf_leak {

class PageBuffer {
 public:
  PageBuffer() = default;
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;
  ~PageBuffer() { Release(); }

  // Maps room for `capacity` bytes (none written yet). Returns 0 or an errno value.
  int Reserve(size_t capacity);
  // The next `bytes` bytes, now written; the caller fills them. Within the capacity reserved.
  uint8_t* Append(size_t bytes);
  size_t size() const { return size_; }
  const uint8_t* data() const { return base_; }

  // Hands over the pages written (the rest are unmapped): their base, the bytes written in
  // `size` and the pages' length in `length`. The caller unmaps them; the buffer is empty after.
  // Null (and 0, 0) when nothing was written.
  void* Take(size_t* size, size_t* length);

 private:
  void Release();

  uint8_t* base_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
};

}  // namespace ebpf_leak
