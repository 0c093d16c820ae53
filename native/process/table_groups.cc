#include "process/table_groups.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace ebpf_leak::process {

int TableGroups::Map(int fd, uint32_t buckets) {
  Unmap();
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t bytes = (static_cast<size_t>(For(buckets)) * sizeof(uint64_t) + page - 1) / page * page;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return errno;
  flags_ = static_cast<uint64_t*>(p);
  bytes_ = bytes;
  return 0;
}

void TableGroups::Unmap() {
  if (flags_ != nullptr) munmap(flags_, bytes_);
  flags_ = nullptr;
  bytes_ = 0;
}

}  // namespace ebpf_leak::process
