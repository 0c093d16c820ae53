#include "scan/target_memory.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace ebpf_leak {
namespace {

constexpr size_t kPage = 4096;
// Bytes per process_vm_readv() call: the kernel pins the remote pages of one call in batches
// anyway, and smaller calls let a failure fall back to pages over a smaller range.
constexpr size_t kReadPiece = 8u << 20;

// One read attempt over [address, address + length): the bytes read, stopping at the first page
// that cannot be read.
size_t ReadOnce(pid_t pid, uint64_t address, size_t length, uint8_t* out) {
  size_t done = 0;
  while (done < length) {
    struct iovec local = {out + done, length - done};
    struct iovec remote = {reinterpret_cast<void*>(address + done), length - done};
    ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

}  // namespace

bool ReadMappings(pid_t pid, std::vector<Mapping>* out) {
  out->clear();
  char name[64];
  snprintf(name, sizeof name, "/proc/%d/maps", pid);
  FILE* f = fopen(name, "re");
  if (!f) return false;
  char* line = nullptr;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0) {
    Mapping m;
    char perms[8] = {};
    unsigned long long start, end, offset, inode;
    unsigned dev_major, dev_minor;
    int path_at = 0;
    if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu %n", &start, &end, perms, &offset, &dev_major, &dev_minor,
               &inode, &path_at) < 7)
      continue;
    m.start = start;
    m.end = end;
    m.read = perms[0] == 'r';
    m.write = perms[1] == 'w';
    m.exec = perms[2] == 'x';
    m.shared = perms[3] == 's';
    if (path_at > 0) {
      m.path = line + path_at;
      while (!m.path.empty() && (m.path.back() == '\n' || m.path.back() == ' ')) m.path.pop_back();
    }
    m.file = inode != 0;
    if (m.file && m.path.rfind("/dev/", 0) == 0 && m.path != "/dev/zero") {
      // Reading a device's mapping can hang or have effects: valgrind skips them too. (fstat(),
      // not stat(): the addon keeps to glibc 2.28's symbols, native/compat/glibc_compat.c.)
      struct stat st;
      int fd = open(m.path.c_str(), O_PATH | O_CLOEXEC);
      if (fd < 0 || fstat(fd, &st) != 0 || S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) m.device = true;
      if (fd >= 0) close(fd);
    }
    out->push_back(std::move(m));
  }
  free(line);
  fclose(f);
  return !out->empty();
}

const Mapping* MappingAt(const std::vector<Mapping>& maps, uint64_t address) {
  auto it = std::upper_bound(maps.begin(), maps.end(), address,
                             [](uint64_t a, const Mapping& m) { return a < m.end; });
  if (it == maps.end() || address < it->start) return nullptr;
  return &*it;
}

size_t ReadRemote(pid_t pid, uint64_t address, size_t length, void* out) {
  auto* dst = static_cast<uint8_t*>(out);
  size_t total = 0;
  for (size_t at = 0; at < length;) {
    size_t piece = std::min(kReadPiece, length - at);
    size_t got = ReadOnce(pid, address + at, piece, dst + at);
    total += got;
    if (got == piece) {
      at += piece;
      continue;
    }
    // A page that cannot be read (PROT_NONE inside, or unmapped): zeros for it, go on after it.
    uint64_t bad = address + at + got;
    uint64_t next = std::min<uint64_t>((bad / kPage + 1) * kPage, address + at + piece);
    memset(dst + at + got, 0, static_cast<size_t>(next - bad));
    size_t advanced = static_cast<size_t>(next - (address + at));
    at += advanced;
  }
  return total;
}

bool ReadRemoteWord(pid_t pid, uint64_t address, uint64_t* value) {
  return ReadOnce(pid, address, sizeof *value, reinterpret_cast<uint8_t*>(value)) == sizeof *value;
}

}  // namespace ebpf_leak
