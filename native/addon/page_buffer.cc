#include "addon/page_buffer.h"
#include "addon/page_buffer_js.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>
#include <thread>

namespace ebpf_leak {

namespace {

size_t PageAlign(size_t bytes) {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

// The pages of an ArrayBuffer made by TakeAsArrayBuffer: its base and length.
struct Pages {
  void* base;
  size_t length;
};

// Unmapping a written 40 MB buffer (a million-block snapshot) frees ~10,000 pages: 3-5 ms of
// system time, which the finalizer would spend on the JS thread, holding the event loop. Buffers
// that large go to a thread of their own; they are rare (one per large snapshot).
constexpr size_t kUnmapOnThreadBytes = 1 << 20;

void UnmapPages(Pages* pages) {
  munmap(pages->base, pages->length);
  delete pages;
}

void UnmapOffJsThread(Pages* pages) {
  if (pages->length >= kUnmapOnThreadBytes) {
    try {
      std::thread(UnmapPages, pages).detach();
      return;
    } catch (const std::system_error&) {
      // No thread to be had: unmapped here after all.
    }
  }
  UnmapPages(pages);
}

}  // namespace

Napi::ArrayBuffer TakeAsArrayBuffer(Napi::Env env, PageBuffer* buffer) {
  size_t size, length;
  void* data = buffer->Take(&size, &length);
  if (data == nullptr) return Napi::ArrayBuffer::New(env, 0);
  return PagesAsArrayBuffer(env, data, size, length);
}

// V8 is told of the pages (external_buffer.h says why), and told again when they go.
Napi::ArrayBuffer PagesAsArrayBuffer(Napi::Env env, void* data, size_t size, size_t length) {
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(
      env, data, size,
      [](Napi::Env env, void*, Pages* p) {
        Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(p->length));
        UnmapOffJsThread(p);
      },
      new Pages{data, length});
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(length));
  return buffer;
}

int PageBuffer::Reserve(size_t capacity) {
  Release();
  if (capacity == 0) return 0;
  size_t length = PageAlign(capacity);
  // MAP_NORESERVE: no commit charge for the pages that will never be written.
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) return errno;
  base_ = static_cast<uint8_t*>(p);
  mapped_ = length;
  return 0;
}

uint8_t* PageBuffer::Append(size_t bytes) {
  uint8_t* at = base_ + size_;
  size_ += bytes;
  return at;
}

void* PageBuffer::Take(size_t* size, size_t* length) {
  *size = 0;
  *length = 0;
  if (size_ == 0) {
    Release();
    return nullptr;
  }
  size_t used = PageAlign(size_);
  if (used < mapped_) munmap(base_ + used, mapped_ - used);
  void* data = base_;
  *size = size_;
  *length = used;
  base_ = nullptr;
  size_ = 0;
  mapped_ = 0;
  return data;
}

void PageBuffer::Release() {
  if (base_ != nullptr) munmap(base_, mapped_);
  base_ = nullptr;
  size_ = 0;
  mapped_ = 0;
}

}  // namespace ebpf_leak
