#include "symbols/module_files.h"
#include "addon/errors.h"
#include "target/target_file.h"

#include <elfutils/libdwelf.h>
#include <elfutils/libdwfl.h>
#include <errno.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

namespace ebpf_leak::symbols {

constexpr size_t kMaxSections = 1u << 20;

std::string Hex(const void* data, size_t len) {
  static const char digits[] = "0123456789abcdef";
  const auto* p = static_cast<const unsigned char*>(data);
  std::string out;
  out.reserve(len * 2);
  for (size_t i = 0; i < len; i++) {
    out.push_back(digits[p[i] >> 4]);
    out.push_back(digits[p[i] & 15]);
  }
  return out;
}

std::string HexNum(uint64_t v) {
  char buf[24];
  snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

void EnsureElfVersion() {
  static std::once_flag once;
  std::call_once(once, [] { elf_version(EV_CURRENT); });
}

std::string ElfError() {
  const char* m = elf_errmsg(-1);
  return m ? m : "unknown libelf error";
}

std::string DwflError() {
  const char* m = dwfl_errmsg(-1);
  return m ? m : "unknown libdwfl error";
}

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Regular files only, resolved inside a /proc/PID/root they are under (native/target/target_file.h).
int OpenRegularFile(const std::string& path, struct stat* st, std::string* err) {
  return ebpf_leak::OpenTargetFile(path, st, err, kMaxDebugFileBytes);
}

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec &&
         a.st_ctim.tv_sec == b.st_ctim.tv_sec && a.st_ctim.tv_nsec == b.st_ctim.tv_nsec;
}

static bool EndsPastFile(uint64_t offset, uint64_t size, uint64_t fileSize) {
  uint64_t end;
  return __builtin_add_overflow(offset, size, &end) || end > fileSize;
}

// Checks the ELF header, program headers (PT_LOAD contents within the file when checkSegments)
// and section headers (contents within the file) before libdwfl reads anything else.
std::string ValidateElf(Elf* elf, uint64_t fileSize, bool checkSegments) {
  if (elf_kind(elf) != ELF_K_ELF) return "not an ELF file";
  GElf_Ehdr ehdr;
  if (gelf_getehdr(elf, &ehdr) == nullptr) return "bad ELF header: " + ElfError();
  size_t phnum = 0;
  if (elf_getphdrnum(elf, &phnum) != 0) return "bad program headers: " + ElfError();
  for (size_t i = 0; i < phnum; i++) {
    GElf_Phdr ph;
    if (gelf_getphdr(elf, static_cast<int>(i), &ph) == nullptr)
      return "bad program header " + std::to_string(i) + ": " + ElfError();
    if (checkSegments && ph.p_type == PT_LOAD && EndsPastFile(ph.p_offset, ph.p_filesz, fileSize))
      return "PT_LOAD segment " + std::to_string(i) + " extends past the end of the file";
  }
  size_t shnum = 0;
  if (elf_getshdrnum(elf, &shnum) != 0) return "bad section headers: " + ElfError();
  if (shnum > kMaxSections) return "too many sections";
  if (shnum > 0) {
    size_t shstrndx = 0;
    if (elf_getshdrstrndx(elf, &shstrndx) != 0) return "bad section name table: " + ElfError();
    if (shstrndx >= shnum) return "bad section name table index";
    size_t count = 0;
    for (Elf_Scn* scn = nullptr; (scn = elf_nextscn(elf, scn)) != nullptr;) {
      if (++count > shnum) return "bad section count";
      GElf_Shdr sh;
      if (gelf_getshdr(scn, &sh) == nullptr) return "bad section header: " + ElfError();
      if (sh.sh_type != SHT_NOBITS && sh.sh_size > 0 &&
          EndsPastFile(sh.sh_offset, sh.sh_size, fileSize))
        return "section " + std::to_string(elf_ndxscn(scn)) + " extends past the end of the file";
      if (sh.sh_name != 0 && elf_strptr(elf, shstrndx, sh.sh_name) == nullptr)
        return "bad section name: " + ElfError();
    }
  }
  return "";
}

std::string BuildIdOf(Elf* elf) {
  const void* id = nullptr;
  ssize_t n = dwelf_elf_gnu_build_id(elf, &id);
  if (n <= 0 || id == nullptr || n > 1024) return "";
  return Hex(id, static_cast<size_t>(n));
}

// Parses .gnu_debugaltlink (dwz): "path\0" followed by the build ID of the alternate file.
bool ReadAltLink(Elf* elf, AltLink* out) {
  size_t shstrndx = 0;
  if (elf_getshdrstrndx(elf, &shstrndx) != 0) return false;
  for (Elf_Scn* scn = nullptr; (scn = elf_nextscn(elf, scn)) != nullptr;) {
    GElf_Shdr sh;
    if (gelf_getshdr(scn, &sh) == nullptr) return false;
    if (sh.sh_type == SHT_NOBITS) continue;
    const char* name = elf_strptr(elf, shstrndx, sh.sh_name);
    if (name == nullptr || strcmp(name, ".gnu_debugaltlink") != 0) continue;
    Elf_Data* data = elf_rawdata(scn, nullptr);
    if (data == nullptr || data->d_buf == nullptr || data->d_size == 0) return false;
    const char* buf = static_cast<const char*>(data->d_buf);
    const void* nul = memchr(buf, 0, data->d_size);
    if (nul == nullptr) return false;
    size_t nameLen = static_cast<size_t>(static_cast<const char*>(nul) - buf);
    out->name.assign(buf, nameLen);
    out->buildId = Hex(buf + nameLen + 1, data->d_size - nameLen - 1);
    return !out->name.empty();
  }
  return false;
}


// A memfd holding a private copy of a file, so that libdwfl's mmap of it cannot SIGBUS.
int CopyToMemfd(const std::string& path, struct stat* st, std::string* err) {
  int src = OpenRegularFile(path, st, err);
  if (src < 0) return -1;
  uint64_t size = static_cast<uint64_t>(st->st_size);
  if (size > kMaxDebugFileBytes) {
    *err = path + " is too large";
    close(src);
    return -1;
  }
  int mfd = memfd_create("ebpf-leak-debuginfo", MFD_CLOEXEC);
  if (mfd < 0) {
    *err = "memfd_create: " + ErrnoText(errno);
    close(src);
    return -1;
  }
  uint64_t copied = 0;
  bool useSendfile = true;
  std::vector<char> buf;
  while (copied < size) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(size - copied, 1u << 30));
    ssize_t n;
    if (useSendfile) {
      off_t off = static_cast<off_t>(copied);
      n = sendfile(mfd, src, &off, chunk);
      if (n < 0 && (errno == EINVAL || errno == ENOSYS)) {
        useSendfile = false;
        continue;
      }
    } else {
      if (buf.empty()) buf.resize(1u << 20);
      n = pread(src, buf.data(), std::min(chunk, buf.size()), static_cast<off_t>(copied));
      if (n > 0) {
        ssize_t done = 0;
        while (done < n) {
          ssize_t w = write(mfd, buf.data() + done, static_cast<size_t>(n - done));
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) {
            n = -1;
            break;
          }
          done += w;
        }
      }
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *err = "cannot read " + path + ": " + ErrnoText(errno);
      close(src);
      close(mfd);
      return -1;
    }
    if (n == 0) break;  // the file shrank meanwhile: keep what we have
    copied += static_cast<uint64_t>(n);
  }
  close(src);
  return mfd;
}

uint32_t Crc32OfFd(int fd, uint64_t size, bool* ok) {
  *ok = false;
  if (size == 0) {
    *ok = true;
    return 0;
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) return 0;
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(map);
  uint64_t left = size;
  while (left > 0) {
    uInt n = static_cast<uInt>(std::min<uint64_t>(left, 1u << 30));
    crc = crc32(crc, p, n);
    p += n;
    left -= n;
  }
  munmap(map, size);
  *ok = true;
  return static_cast<uint32_t>(crc);
}

}  // namespace ebpf_leak::symbols
