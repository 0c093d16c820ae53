// Symbolizer over elfutils' libdwfl: FILE offsets within one ELF module -> frames (function,
// source file, line), innermost inlined callee first.
//
// JavaScript API (registered by InitSymbolizer):
//
//   symbolize(modulePath: string, offsets: BigUint64Array | Array<number | bigint>,
//             options?: { debugDirs?: string[] }) : Promise<SymbolizedBatch>
//   readBuildId(path: string) : string | null        // lowercase hex of NT_GNU_BUILD_ID
//
// The result has one entry per offset, in order: a list of frames (function, source file, line,
// inlined or not), innermost first. An offset is a file offset in modulePath (what /proc/PID/maps
// gives: address - start + offset); it is turned into an ELF virtual address through the PT_LOAD
// program headers. An entry has no frames when nothing is known about the address, and an error
// message instead when the module cannot be read (missing, truncated, corrupt) or the offset is in
// no PT_LOAD segment. Bad argument types throw a TypeError; nothing else throws.
//
// The result is compact, so that the JS thread does not build thousands of objects in one task
// (lib/report/symbolize.ts reads it in place, through lib/native/symbolized-batch.ts, and makes its frames in
// slices):
//
//   SymbolizedBatch = {
//     strings: Uint8Array,      // UTF-8 of each distinct string (symbol, file, error), back to back
//     stringEnds: Uint32Array,  // string i is strings[stringEnds[i - 1] (0 for i = 0), stringEnds[i])
//     entries: Int32Array,      // 2 per offset: first frame and frame count, or -1 and error string
//     frames: Int32Array,       // 4 per frame: symbol string or -1, file string or -1,
//                               //   line or 0, 1 when inlined into the next frame else 0
//   }
//
// Safety: we run as root on files a traced (possibly hostile) process controls.
//  - Files are opened O_NONBLOCK (a FIFO cannot hang us) and must be regular files; paths under
//    /proc/PID/root/ are resolved with openat2(RESOLVE_IN_ROOT) so a symlink in a container
//    cannot point us at the host's files.
//  - The main ELF is read with ELF_C_READ (pread on demand, no mmap): a file truncated while we
//    hold it gives read errors, not SIGBUS. Separate debug files are copied into a memfd we own
//    before libdwfl maps them, for the same reason.
//  - Section and segment tables are checked against the file size before libdwfl sees the file.
//  - DIE trees are walked iteratively, with offsets required to move forward and a visit cap.
//  - No C++ exception crosses into C; the worker catches everything.
// What in-process parsing cannot rule out is a bug in libelf/libdw itself on crafted input, or a
// read that blocks forever on a file system the target controls (FUSE).
//
// Debug information is looked up (our own find_debuginfo, in the spirit of
// dwfl_standard_find_debuginfo):
//   1. by build ID: DIR/.build-id/xx/yyyy.debug for DIR in debugDirs, then
//      /proc/PID/root/usr/lib/debug (when the module is under /proc/PID/root), then /usr/lib/debug;
//   2. by .gnu_debuglink: the module's directory, its .debug/ subdirectory, and DIR/<module dir>/
//      for the same DIRs. A candidate must carry the module's build ID (or, when the module has
//      none, match the debuglink CRC).
//   3. dwz alternate files (.gnu_debugaltlink) by build ID and by the recorded path.
// .gnu_debugdata (MiniDebugInfo) symbol tables are read by libdwfl itself when elfutils was built
// with lzma (Debian's is), and only when the module has no .symtab and no debug file was found.
//
// Lookups: a module's function symbols are indexed once as sorted intervals (libdwfl's
// dwfl_module_addrinfo scans the whole table per call), and a CU's subprogram and
// inlined_subroutine DIEs are indexed by pc range the first time an address falls in it
// (dwarf_getscopes walks the CU again per call). Line numbers come from dwfl_module_getsrc; an
// inlined frame's caller line is the callee's DW_AT_call_file/DW_AT_call_line. Addresses in
// alignment padding between functions get no symbol (binutils' addr2line names the previous one).
//
// Caches: one Dwfl per module path (plus debugDirs), checked against the file's identity
// (device, inode, size, mtime, ctime) on every call and rebuilt when the file changed; up to
// kMaxModules modules, least recently used evicted. Each module keeps a per-offset result cache.

#include "symbolizer.h"
#include "demangle.h"
#include "errors.h"
#include "queued_promise.h"

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwelf.h>
#include <elfutils/libdwfl.h>
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <linux/openat2.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "external_buffer.h"

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

namespace {

constexpr uint64_t kMaxDebugFileBytes = 4ull << 30;  // larger debug files are not loaded
constexpr size_t kMaxModules = 64;
constexpr size_t kMaxCachedOffsetsPerModule = 1u << 20;
constexpr size_t kMaxOffsetsPerCall = 1u << 24;
constexpr size_t kMaxSections = 1u << 20;
constexpr size_t kMaxInlineDepth = 256;
constexpr size_t kMaxDiesPerCu = 1u << 25;       // a CU walk stops here (corrupt/cyclic DWARF)
constexpr size_t kMaxRangesPerDie = 1u << 16;
constexpr size_t kMaxBackwardScan = 1u << 16;   // interval lookups give up after this many steps

using ebpf_leak::ErrnoText;

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

// "/proc/123/root/usr/lib/x.so" -> root "/proc/123/root", rest "usr/lib/x.so".
bool SplitProcRoot(const std::string& path, std::string* root, std::string* rest) {
  static const char kProc[] = "/proc/";
  if (path.compare(0, sizeof kProc - 1, kProc) != 0) return false;
  size_t i = sizeof kProc - 1;
  size_t digits = i;
  while (i < path.size() && path[i] >= '0' && path[i] <= '9') i++;
  if (i == digits) return false;
  static const char kRoot[] = "/root";
  if (path.compare(i, sizeof kRoot - 1, kRoot) != 0) return false;
  size_t after = i + sizeof kRoot - 1;
  if (after != path.size() && path[after] != '/') return false;
  *root = path.substr(0, after);
  size_t r = after;
  while (r < path.size() && path[r] == '/') r++;
  *rest = r < path.size() ? path.substr(r) : ".";
  return true;
}

// Opens a regular file read-only without following a container's symlinks out of its root and
// without blocking on FIFOs. Returns the fd (and fills *st) or -1 with *err set.
int OpenRegularFile(const std::string& path, struct stat* st, std::string* err) {
  if (path.empty() || path.find('\0') != std::string::npos) {
    *err = "invalid path";
    return -1;
  }
  const int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
  int fd = -1;
  bool done = false;
  std::string root, rest;
  if (SplitProcRoot(path, &root, &rest)) {
    int rootfd = open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd >= 0) {
      struct open_how how;
      memset(&how, 0, sizeof how);
      how.flags = static_cast<uint64_t>(flags);
      how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
      fd = static_cast<int>(syscall(SYS_openat2, rootfd, rest.c_str(), &how, sizeof how));
      int e = errno;
      close(rootfd);
      if (fd >= 0 || (e != ENOSYS && e != EPERM && e != EINVAL && e != E2BIG)) {
        done = true;
        if (fd < 0) {
          *err = "cannot open " + path + ": " + ErrnoText(e);
          return -1;
        }
      }
    }
  }
  if (!done) {
    fd = open(path.c_str(), flags);
    if (fd < 0) {
      *err = "cannot open " + path + ": " + ErrnoText(errno);
      return -1;
    }
  }
  if (fstat(fd, st) != 0) {
    *err = "cannot stat " + path + ": " + ErrnoText(errno);
    close(fd);
    return -1;
  }
  if (!S_ISREG(st->st_mode)) {
    *err = path + " is not a regular file";
    close(fd);
    return -1;
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  return fd;
}

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec &&
         a.st_ctim.tv_sec == b.st_ctim.tv_sec && a.st_ctim.tv_nsec == b.st_ctim.tv_nsec;
}

bool EndsPastFile(uint64_t offset, uint64_t size, uint64_t fileSize) {
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

struct AltLink {
  std::string name;
  std::string buildId;
};

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


const char* DieName(Dwarf_Die* die) {
  Dwarf_Attribute attr;
  const char* name = nullptr;
  if (dwarf_attr_integrate(die, DW_AT_linkage_name, &attr) != nullptr) name = dwarf_formstring(&attr);
  if (name == nullptr && dwarf_attr_integrate(die, DW_AT_MIPS_linkage_name, &attr) != nullptr)
    name = dwarf_formstring(&attr);
  if (name == nullptr && dwarf_attr_integrate(die, DW_AT_name, &attr) != nullptr)
    name = dwarf_formstring(&attr);
  return name;
}

struct Frame {
  std::string symbol;
  std::string file;
  int line = 0;
  bool inlined = false;
};

struct AddrResult {
  bool failed = false;
  std::string error;
  std::vector<Frame> frames;
};

AddrResult Failure(std::string message) {
  AddrResult r;
  r.failed = true;
  r.error = std::move(message);
  return r;
}

struct LoadSegment {
  uint64_t offset;
  uint64_t filesz;
  uint64_t vaddr;
};

// Function symbols of a module as sorted intervals (libdwfl's own address lookup scans the
// whole symbol table on every call).
struct SymEntry {
  uint64_t start;
  uint64_t end;
  const char* name;  // owned by libelf data of the module
  int rank;          // lower is preferred among symbols covering the same address
  bool sized;
};

// The functions and inlined instances of one CU, by pc range, built in one walk of its DIE tree
// (dwarf_getscopes walks the CU again for every address).
struct FnNode {
  Dwarf_Die die;
  int parent;  // enclosing subprogram/inlined_subroutine node, -1 at the top
  int depth;
};

struct PcRange {
  uint64_t lo;
  uint64_t hi;  // exclusive
  int node;
};

struct CuIndex {
  Dwarf_Die cudie;
  std::vector<FnNode> nodes;
  std::vector<PcRange> ranges;  // sorted by lo
  std::vector<uint64_t> maxHi;  // prefix maximum of hi
  bool filesLoaded = false;
  Dwarf_Files* files = nullptr;
  size_t nfiles = 0;
};

// Tags whose children can hold code ranges: the only subtrees the CU walk descends into.
bool MayContainCode(int tag) {
  switch (tag) {
    case DW_TAG_subprogram:
    case DW_TAG_inlined_subroutine:
    case DW_TAG_lexical_block:
    case DW_TAG_namespace:
    case DW_TAG_module:
    case DW_TAG_try_block:
    case DW_TAG_catch_block:
    case DW_TAG_with_stmt:
    case DW_TAG_structure_type:
    case DW_TAG_class_type:
    case DW_TAG_union_type:
    case DW_TAG_entry_point:
      return true;
    default:
      return false;
  }
}

std::unique_ptr<CuIndex> BuildCuIndex(Dwarf_Die* cudie) {
  auto ci = std::make_unique<CuIndex>();
  ci->cudie = *cudie;
  struct Item {
    Dwarf_Die die;
    int parent;
    int depth;
  };
  std::vector<Item> stack;
  Dwarf_Die child;
  if (dwarf_child(cudie, &child) == 0) stack.push_back({child, -1, 0});
  size_t visited = 0;
  while (!stack.empty() && visited++ < kMaxDiesPerCu) {
    Item it = stack.back();
    stack.pop_back();
    Dwarf_Die sib;
    // Offsets must move forward, or a crafted DW_AT_sibling could loop us.
    if (dwarf_siblingof(&it.die, &sib) == 0 && dwarf_dieoffset(&sib) > dwarf_dieoffset(&it.die))
      stack.push_back({sib, it.parent, it.depth});
    int tag = dwarf_tag(&it.die);
    int parent = it.parent;
    int depth = it.depth;
    if (tag == DW_TAG_subprogram || tag == DW_TAG_inlined_subroutine) {
      int idx = static_cast<int>(ci->nodes.size());
      bool any = false;
      Dwarf_Addr base = 0, lo = 0, hi = 0;
      ptrdiff_t off = 0;
      size_t n = 0;
      while (n++ < kMaxRangesPerDie && (off = dwarf_ranges(&it.die, off, &base, &lo, &hi)) > 0) {
        if (hi > lo) {
          ci->ranges.push_back({lo, hi, idx});
          any = true;
        }
      }
      if (!any) continue;  // a declaration, an abstract instance, or code optimized away
      ci->nodes.push_back({it.die, parent, depth});
      parent = idx;
      depth++;
    } else if (!MayContainCode(tag)) {
      continue;
    }
    if (dwarf_haschildren(&it.die) > 0 && dwarf_child(&it.die, &child) == 0 &&
        dwarf_dieoffset(&child) > dwarf_dieoffset(&it.die))
      stack.push_back({child, parent, depth});
  }
  std::sort(ci->ranges.begin(), ci->ranges.end(),
            [](const PcRange& a, const PcRange& b) { return a.lo < b.lo; });
  uint64_t max = 0;
  ci->maxHi.reserve(ci->ranges.size());
  for (const auto& r : ci->ranges) {
    max = std::max(max, r.hi);
    ci->maxHi.push_back(max);
  }
  return ci;
}

// Innermost function node whose ranges contain pc, or -1.
int InnermostNode(const CuIndex& ci, uint64_t pc) {
  auto it = std::upper_bound(ci.ranges.begin(), ci.ranges.end(), pc,
                             [](uint64_t v, const PcRange& r) { return v < r.lo; });
  ptrdiff_t j = (it - ci.ranges.begin()) - 1;
  int best = -1;
  for (size_t steps = 0; j >= 0 && ci.maxHi[j] > pc && steps < kMaxBackwardScan; j--, steps++) {
    const PcRange& r = ci.ranges[j];
    if (pc < r.hi && (best < 0 || ci.nodes[r.node].depth > ci.nodes[best].depth)) best = r.node;
  }
  return best;
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

int FindElfCallback(Dwfl_Module*, void**, const char*, Dwarf_Addr, char**, Elf**);
int FindDebuginfoCallback(Dwfl_Module*, void**, const char*, Dwarf_Addr, const char*, const char*,
                          GElf_Word, char**);

const Dwfl_Callbacks kCallbacks = {
    FindElfCallback,
    FindDebuginfoCallback,
    dwfl_offline_section_address,
    nullptr,
};

class Module {
 public:
  Module(std::string path, const std::vector<std::string>& userDirs) : path_(std::move(path)) {
    std::string root, rest;
    if (SplitProcRoot(path_, &root, &rest)) {
      rootPrefix_ = root;
      inRootPath_ = "/" + rest;
    } else {
      inRootPath_ = path_;
    }
    for (const auto& d : userDirs) AddDebugDir(d);
    if (!rootPrefix_.empty()) AddDebugDir(rootPrefix_ + "/usr/lib/debug");
    AddDebugDir("/usr/lib/debug");
  }

  ~Module() {
    if (dwfl_ != nullptr) dwfl_end(dwfl_);
    if (pendingElf_ != nullptr) elf_end(pendingElf_);
    if (pendingFd_ >= 0) close(pendingFd_);
  }

  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const struct stat& Stat() const { return st_; }

  // Takes ownership of fd.
  void Open(int fd, const struct stat& st) {
    st_ = st;
    Elf* elf = elf_begin(fd, ELF_C_READ, nullptr);
    if (elf == nullptr) {
      openError_ = path_ + ": " + ElfError();
      close(fd);
      return;
    }
    std::string bad = ValidateElf(elf, static_cast<uint64_t>(st.st_size), true);
    if (!bad.empty()) {
      openError_ = path_ + ": " + bad;
      elf_end(elf);
      close(fd);
      return;
    }
    size_t phnum = 0;
    elf_getphdrnum(elf, &phnum);
    bool haveLow = false;
    uint64_t low = 0, high = 0;
    for (size_t i = 0; i < phnum; i++) {
      GElf_Phdr ph;
      if (gelf_getphdr(elf, static_cast<int>(i), &ph) == nullptr || ph.p_type != PT_LOAD) continue;
      if (!haveLow) {  // as libdwfl computes it, so that the module bias comes out 0
        low = ph.p_vaddr & -ph.p_align;
        haveLow = true;
      }
      uint64_t end;
      if (!__builtin_add_overflow(ph.p_vaddr, ph.p_memsz, &end)) high = std::max(high, end);
      if (ph.p_filesz > 0) loads_.push_back({ph.p_offset, ph.p_filesz, ph.p_vaddr});
    }
    if (loads_.empty()) {
      openError_ = path_ + ": no loadable segments";
      elf_end(elf);
      close(fd);
      return;
    }
    if (high <= low) high = low + 1;
    buildId_ = BuildIdOf(elf);
    GElf_Word crc = 0;
    if (const char* link = dwelf_elf_gnu_debuglink(elf, &crc)) {
      debuglink_.assign(link, strnlen(link, PATH_MAX));
      debuglinkCrc_ = crc;
    }
    AltLink alt;
    if (ReadAltLink(elf, &alt)) altLinks_.push_back(alt);

    dwfl_ = dwfl_begin(&kCallbacks);
    if (dwfl_ == nullptr) {
      openError_ = "dwfl_begin: " + DwflError();
      elf_end(elf);
      close(fd);
      return;
    }
    dwfl_report_begin(dwfl_);
    mod_ = dwfl_report_module(dwfl_, path_.c_str(), low, high);
    dwfl_report_end(dwfl_, nullptr, nullptr);
    if (mod_ == nullptr) {
      openError_ = path_ + ": " + DwflError();
      elf_end(elf);
      close(fd);
      return;
    }
    void** slot = nullptr;
    dwfl_module_info(mod_, &slot, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
    if (slot != nullptr) *slot = this;
    pendingElf_ = elf;
    pendingFd_ = fd;
    Dwarf_Addr bias = 0;
    if (dwfl_module_getelf(mod_, &bias) == nullptr) {
      openError_ = path_ + ": " + DwflError();
      return;
    }
    bias_ = bias;
    if (dwfl_module_getsymtab(mod_) < 0) symError_ = DwflError();
    Dwarf_Addr dwbias = 0;
    haveDwarf_ = dwfl_module_getdwarf(mod_, &dwbias) != nullptr;
  }

  AddrResult Lookup(uint64_t offset) {
    if (!openError_.empty()) return Failure(openError_);
    auto it = cache_.find(offset);
    if (it != cache_.end()) return it->second;
    AddrResult r;
    try {
      r = Compute(offset);
    } catch (const std::exception& e) {
      return Failure(std::string("symbolization failed: ") + e.what());
    }
    if (cache_.size() >= kMaxCachedOffsetsPerModule) cache_.clear();
    cache_.emplace(offset, r);
    return r;
  }

  // find_elf: hand libdwfl the Elf we opened and validated (it takes ownership of both).
  int TakeMainElf(char** fileName, Elf** elfp) {
    if (pendingElf_ == nullptr) {
      errno = ENOENT;
      return -1;
    }
    *elfp = pendingElf_;
    pendingElf_ = nullptr;
    int fd = pendingFd_;
    pendingFd_ = -1;
    if (fileName != nullptr && *fileName == nullptr) *fileName = strdup(path_.c_str());
    return fd;
  }

  // find_debuginfo for the module itself (debuglink = its .gnu_debuglink) or for a dwz alternate
  // file (debuglink = the .gnu_debugaltlink path recorded in the main or debug file).
  int FindDebugFile(const char* fileName, const char* debuglink, GElf_Word crc, char** outName) {
    const AltLink* alt = nullptr;
    if (debuglink != nullptr)
      for (const auto& a : altLinks_)
        if (a.name == debuglink) alt = &a;

    std::vector<std::string> candidates;
    const std::string& wantId = alt != nullptr ? alt->buildId : buildId_;
    if (wantId.size() >= 4)
      for (const auto& dir : debugDirs_)
        candidates.push_back(dir + "/.build-id/" + wantId.substr(0, 2) + "/" + wantId.substr(2) +
                             ".debug");
    if (alt != nullptr) {
      const std::string& name = alt->name;
      if (!name.empty() && name[0] == '/') {
        if (!rootPrefix_.empty()) candidates.push_back(rootPrefix_ + name);
        candidates.push_back(name);
      } else if (!name.empty() && fileName != nullptr) {
        candidates.push_back(Dirname(fileName) + "/" + name);
      }
    } else if (debuglink != nullptr && debuglink[0] != '\0' && strchr(debuglink, '/') == nullptr) {
      std::string link = debuglink;
      std::string dir = Dirname(path_);
      candidates.push_back(dir + "/" + link);
      candidates.push_back(dir + "/.debug/" + link);
      std::string inRootDir = Dirname(inRootPath_);
      for (const auto& d : debugDirs_) candidates.push_back(d + inRootDir + "/" + link);
    }

    for (const auto& candidate : candidates) {
      int fd = TryDebugCandidate(candidate, wantId, alt == nullptr ? crc : 0, alt == nullptr);
      if (fd >= 0) {
        if (outName != nullptr && *outName == nullptr) *outName = strdup(candidate.c_str());
        if (alt == nullptr) debugFile_ = candidate;
        return fd;
      }
    }
    errno = ENOENT;
    return -1;
  }

 private:
  void AddDebugDir(const std::string& d) {
    if (d.empty() || d.find('\0') != std::string::npos) return;
    std::string dir = d;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    if (std::find(debugDirs_.begin(), debugDirs_.end(), dir) == debugDirs_.end())
      debugDirs_.push_back(dir);
  }

  int TryDebugCandidate(const std::string& path, const std::string& wantId, GElf_Word crc,
                        bool recordAltLink) {
    struct stat st;
    std::string err;
    // Cheap checks first: it must exist and not be the module itself.
    {
      int probe = OpenRegularFile(path, &st, &err);
      if (probe < 0) return -1;
      close(probe);
      if (st.st_dev == st_.st_dev && st.st_ino == st_.st_ino) return -1;
    }
    int fd = CopyToMemfd(path, &st, &err);
    if (fd < 0) return -1;
    struct stat mst;
    if (fstat(fd, &mst) != 0) {
      close(fd);
      return -1;
    }
    Elf* elf = elf_begin(fd, ELF_C_READ_MMAP, nullptr);
    if (elf == nullptr) {
      close(fd);
      return -1;
    }
    bool ok = ValidateElf(elf, static_cast<uint64_t>(mst.st_size), false).empty();
    if (ok) {
      std::string id = BuildIdOf(elf);
      if (!wantId.empty()) {
        ok = id == wantId;
      } else if (crc != 0) {
        bool crcOk = false;
        uint32_t got = Crc32OfFd(fd, static_cast<uint64_t>(mst.st_size), &crcOk);
        ok = crcOk && got == crc;
      }
    }
    if (ok && recordAltLink) {
      AltLink alt;
      if (ReadAltLink(elf, &alt)) altLinks_.push_back(alt);
    }
    elf_end(elf);
    if (!ok) {
      close(fd);
      return -1;
    }
    return fd;
  }

  CuIndex* CuIndexFor(Dwarf_Die* cudie) {
    Dwarf_Off key = dwarf_dieoffset(cudie);
    auto it = cuIndex_.find(key);
    if (it != cuIndex_.end()) return it->second.get();
    auto built = BuildCuIndex(cudie);
    CuIndex* p = built.get();
    cuIndex_.emplace(key, std::move(built));
    return p;
  }

  void BuildSymbolIndex() {
    symIndexBuilt_ = true;
    if (!symError_.empty()) return;
    int n = dwfl_module_getsymtab(mod_);
    for (int i = 0; i < n; i++) {
      GElf_Sym sym;
      GElf_Addr value = 0;
      GElf_Word shndx = 0;
      Elf* elf = nullptr;
      Dwarf_Addr bias = 0;
      const char* name = dwfl_module_getsym_info(mod_, i, &sym, &value, &shndx, &elf, &bias);
      if (name == nullptr || name[0] == '\0' || name[0] == '$') continue;
      int type = GELF_ST_TYPE(sym.st_info);
      if (type != STT_FUNC && type != STT_GNU_IFUNC && type != STT_NOTYPE) continue;
      if (shndx == SHN_UNDEF || shndx == SHN_ABS || shndx == SHN_COMMON) continue;
      SymEntry e{value, 0, name, 0, sym.st_size > 0};
      if (e.sized) {
        if (__builtin_add_overflow(value, sym.st_size, &e.end)) continue;
      } else {
        // An unsized symbol covers up to the end of its section (clamped to the next symbol below).
        e.end = value + 1;
        GElf_Shdr sh;
        Elf_Scn* scn = elf != nullptr ? elf_getscn(elf, shndx) : nullptr;
        if (scn != nullptr && gelf_getshdr(scn, &sh) != nullptr) {
          uint64_t secStart = sh.sh_addr + bias, secEnd = 0;
          if (!__builtin_add_overflow(secStart, sh.sh_size, &secEnd) && value >= secStart && value < secEnd)
            e.end = secEnd;
        }
      }
      int bind = GELF_ST_BIND(sym.st_info);
      e.rank = (bind == STB_GLOBAL ? 0 : bind == STB_WEAK ? 1 : 2) + (type == STT_NOTYPE ? 3 : 0);
      syms_.push_back(e);
    }
    std::stable_sort(syms_.begin(), syms_.end(),
                     [](const SymEntry& a, const SymEntry& b) { return a.start < b.start; });
    for (size_t i = 0; i < syms_.size(); i++) {
      if (syms_[i].sized) continue;
      for (size_t j = i + 1; j < syms_.size(); j++)
        if (syms_[j].start > syms_[i].start) {
          syms_[i].end = std::min(syms_[i].end, syms_[j].start);
          break;
        }
    }
    uint64_t max = 0;
    symMaxEnd_.reserve(syms_.size());
    for (const auto& e : syms_) {
      max = std::max(max, e.end);
      symMaxEnd_.push_back(max);
    }
  }

  const char* LookupSymbol(uint64_t addr) {
    if (!symIndexBuilt_) BuildSymbolIndex();
    auto it = std::upper_bound(syms_.begin(), syms_.end(), addr,
                               [](uint64_t v, const SymEntry& e) { return v < e.start; });
    ptrdiff_t j = (it - syms_.begin()) - 1;
    const SymEntry* best = nullptr;
    for (size_t steps = 0; j >= 0 && symMaxEnd_[j] > addr && steps < kMaxBackwardScan; j--, steps++) {
      const SymEntry& e = syms_[j];
      if (addr >= e.end) continue;
      if (best == nullptr || (e.sized && !best->sized) ||
          (e.sized == best->sized &&
           (e.end - e.start < best->end - best->start ||
            (e.end - e.start == best->end - best->start && e.rank < best->rank))))
        best = &e;
    }
    return best != nullptr ? best->name : nullptr;
  }

  AddrResult Compute(uint64_t offset) {
    const LoadSegment* seg = nullptr;
    for (const auto& s : loads_)
      if (offset >= s.offset && offset - s.offset < s.filesz) {
        seg = &s;
        break;
      }
    if (seg == nullptr)
      return Failure("offset " + HexNum(offset) + " is in no PT_LOAD segment of " + path_);
    const Dwarf_Addr addr = seg->vaddr + (offset - seg->offset) + bias_;

    std::string file0;
    int line0 = 0;
    std::vector<const FnNode*> chain;
    CuIndex* ci = nullptr;
    if (haveDwarf_) {
      if (Dwfl_Line* line = dwfl_module_getsrc(mod_, addr)) {
        int lineno = 0;
        const char* f = dwfl_lineinfo(line, nullptr, &lineno, nullptr, nullptr, nullptr);
        if (f != nullptr) file0 = f;
        line0 = lineno > 0 ? lineno : 0;
      }
      Dwarf_Addr cuBias = 0;
      if (Dwarf_Die* cudie = dwfl_module_addrdie(mod_, addr, &cuBias)) {
        ci = CuIndexFor(cudie);
        // Innermost inlined instance first, up to the subprogram it was inlined into.
        int node = ci != nullptr ? InnermostNode(*ci, addr - cuBias) : -1;
        while (node >= 0 && chain.size() < kMaxInlineDepth) {
          const FnNode& fn = ci->nodes[static_cast<size_t>(node)];
          chain.push_back(&fn);
          if (dwarf_tag(const_cast<Dwarf_Die*>(&fn.die)) == DW_TAG_subprogram) break;
          if (fn.parent >= node) break;  // parents come first in the walk; anything else is bogus
          node = fn.parent;
        }
      }
    }

    AddrResult r;
    if (chain.empty()) {
      const char* symName = LookupSymbol(addr);
      if (symName != nullptr || !file0.empty()) {
        Frame f;
        f.symbol = ebpf_leak::DemangleForDisplay(symName);
        f.file = file0;
        f.line = line0;
        r.frames.push_back(std::move(f));
      }
    } else {
      if (chain.size() > 1 && !ci->filesLoaded) {
        ci->filesLoaded = true;
        if (dwarf_getsrcfiles(&ci->cudie, &ci->files, &ci->nfiles) != 0) {
          ci->files = nullptr;
          ci->nfiles = 0;
        }
      }
      for (size_t k = 0; k < chain.size(); k++) {
        Frame f;
        Dwarf_Die die = chain[k]->die;
        const char* name = DieName(&die);
        if (name == nullptr && k + 1 == chain.size()) name = LookupSymbol(addr);
        f.symbol = ebpf_leak::DemangleForDisplay(name);
        f.inlined = dwarf_tag(&die) == DW_TAG_inlined_subroutine;
        if (k == 0) {
          f.file = file0;
          f.line = line0;
        } else {
          // The caller's location is the call site recorded on the inlined callee's DIE.
          Dwarf_Die callee = chain[k - 1]->die;
          Dwarf_Attribute attr;
          Dwarf_Word v = 0;
          if (dwarf_attr(&callee, DW_AT_call_file, &attr) != nullptr &&
              dwarf_formudata(&attr, &v) == 0 && ci->files != nullptr && v < ci->nfiles) {
            const char* fname = dwarf_filesrc(ci->files, v, nullptr, nullptr);
            if (fname != nullptr) f.file = fname;
          }
          if (dwarf_attr(&callee, DW_AT_call_line, &attr) != nullptr &&
              dwarf_formudata(&attr, &v) == 0)
            f.line = static_cast<int>(std::min<Dwarf_Word>(v, INT_MAX));
        }
        r.frames.push_back(std::move(f));
      }
    }
    if (r.frames.empty() && !symError_.empty() && !haveDwarf_)
      return Failure("no symbol information in " + path_ + ": " + symError_);
    return r;
  }

  std::string path_;
  std::string rootPrefix_;
  std::string inRootPath_;
  std::vector<std::string> debugDirs_;
  struct stat st_ {};
  std::string openError_;
  std::string buildId_;
  std::string debuglink_;
  GElf_Word debuglinkCrc_ = 0;
  std::vector<AltLink> altLinks_;
  std::vector<LoadSegment> loads_;
  Dwfl* dwfl_ = nullptr;
  Dwfl_Module* mod_ = nullptr;
  Dwarf_Addr bias_ = 0;
  Elf* pendingElf_ = nullptr;
  int pendingFd_ = -1;
  std::string symError_;
  bool haveDwarf_ = false;
  std::string debugFile_;
  std::unordered_map<uint64_t, AddrResult> cache_;
  bool symIndexBuilt_ = false;
  std::vector<SymEntry> syms_;
  std::vector<uint64_t> symMaxEnd_;
  std::unordered_map<Dwarf_Off, std::unique_ptr<CuIndex>> cuIndex_;
};

int FindElfCallback(Dwfl_Module*, void** userdata, const char*, Dwarf_Addr, char** fileName,
                    Elf** elfp) {
  try {
    auto* m = userdata != nullptr ? static_cast<Module*>(*userdata) : nullptr;
    if (m == nullptr) {
      errno = ENOENT;
      return -1;
    }
    return m->TakeMainElf(fileName, elfp);
  } catch (...) {
    errno = ENOMEM;
    return -1;
  }
}

int FindDebuginfoCallback(Dwfl_Module*, void** userdata, const char*, Dwarf_Addr,
                          const char* fileName, const char* debuglink, GElf_Word crc,
                          char** debuginfoFileName) {
  try {
    auto* m = userdata != nullptr ? static_cast<Module*>(*userdata) : nullptr;
    if (m == nullptr) {
      errno = ENOENT;
      return -1;
    }
    return m->FindDebugFile(fileName, debuglink, crc, debuginfoFileName);
  } catch (...) {
    errno = ENOMEM;
    return -1;
  }
}

// --- Module cache -------------------------------------------------------------------------------

struct CacheEntry {
  std::string key;
  std::unique_ptr<Module> module;
  uint64_t lastUse = 0;
};

std::mutex gMutex;  // guards the cache and every libdwfl call (libdwfl is not thread-safe)
std::vector<CacheEntry> gModules;
uint64_t gTick = 0;

struct Request {
  std::string path;
  std::vector<uint64_t> offsets;
  std::vector<std::string> debugDirs;
};

std::vector<AddrResult> RunRequest(const Request& req) {
  std::vector<AddrResult> results;
  std::lock_guard<std::mutex> lock(gMutex);
  try {
    EnsureElfVersion();
    std::string key = req.path;
    for (const auto& d : req.debugDirs) {
      key.push_back('\0');
      key += d;
    }
    struct stat st;
    std::string err;
    int fd = OpenRegularFile(req.path, &st, &err);
    auto found = std::find_if(gModules.begin(), gModules.end(),
                              [&](const CacheEntry& e) { return e.key == key; });
    if (fd < 0) {
      if (found != gModules.end()) gModules.erase(found);
      results.assign(req.offsets.size(), Failure(err));
      return results;
    }
    Module* module = nullptr;
    if (found != gModules.end() && SameFile(found->module->Stat(), st)) {
      close(fd);
      module = found->module.get();
      found->lastUse = ++gTick;
    } else {
      auto fresh = std::make_unique<Module>(req.path, req.debugDirs);
      fresh->Open(fd, st);
      if (found != gModules.end()) {
        found->module = std::move(fresh);
        found->lastUse = ++gTick;
        module = found->module.get();
      } else {
        if (gModules.size() >= kMaxModules) {
          auto oldest = std::min_element(
              gModules.begin(), gModules.end(),
              [](const CacheEntry& a, const CacheEntry& b) { return a.lastUse < b.lastUse; });
          gModules.erase(oldest);
        }
        gModules.push_back(CacheEntry{key, std::move(fresh), ++gTick});
        module = gModules.back().module.get();
      }
    }
    results.reserve(req.offsets.size());
    for (uint64_t off : req.offsets) results.push_back(module->Lookup(off));
  } catch (const std::exception& e) {
    results.resize(req.offsets.size(), Failure(std::string("symbolization failed: ") + e.what()));
  }
  return results;
}

// --- N-API --------------------------------------------------------------------------------------

std::string StringArg(const Napi::Value& v, const char* what) {
  if (!v.IsString()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a string");
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s.empty() || s.find('\0') != std::string::npos)
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a non-empty path");
  return s;
}

uint64_t OffsetValue(const Napi::Value& v) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::TypeError::New(v.Env(), "offsets must fit in 64 bits unsigned");
    return u;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d > 9007199254740991.0 || d != static_cast<double>(static_cast<uint64_t>(d)))
      throw Napi::TypeError::New(v.Env(), "offsets must be non-negative integers");
    return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(v.Env(), "offsets must be numbers or bigints");
}

Request ParseRequest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Request req;
  req.path = StringArg(info[0], "modulePath");
  Napi::Value offs = info[1];
  if (offs.IsTypedArray()) {
    auto ta = offs.As<Napi::TypedArray>();
    if (ta.TypedArrayType() != napi_biguint64_array)
      throw Napi::TypeError::New(env, "offsets must be a BigUint64Array or an array");
    auto arr = offs.As<Napi::TypedArrayOf<uint64_t>>();
    if (arr.ElementLength() > kMaxOffsetsPerCall) throw Napi::RangeError::New(env, "too many offsets");
    req.offsets.assign(arr.Data(), arr.Data() + arr.ElementLength());
  } else if (offs.IsArray()) {
    auto arr = offs.As<Napi::Array>();
    uint32_t n = arr.Length();
    if (n > kMaxOffsetsPerCall) throw Napi::RangeError::New(env, "too many offsets");
    req.offsets.reserve(n);
    for (uint32_t i = 0; i < n; i++) req.offsets.push_back(OffsetValue(arr.Get(i)));
  } else {
    throw Napi::TypeError::New(env, "offsets must be a BigUint64Array or an array");
  }
  if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
    if (!info[2].IsObject()) throw Napi::TypeError::New(env, "options must be an object");
    Napi::Value dirs = info[2].As<Napi::Object>().Get("debugDirs");
    if (!dirs.IsUndefined() && !dirs.IsNull()) {
      if (!dirs.IsArray()) throw Napi::TypeError::New(env, "options.debugDirs must be an array of strings");
      auto arr = dirs.As<Napi::Array>();
      for (uint32_t i = 0; i < arr.Length(); i++)
        req.debugDirs.push_back(StringArg(arr.Get(i), "options.debugDirs[]"));
    }
  }
  return req;
}

// The results of one call in the compact form of the API comment at the top. Built on the worker
// thread: the JS thread then only wraps four buffers, where an object per frame (and a string per
// symbol) held it for ~30 ms on 10,000 libc addresses.
struct EncodedResults {
  std::vector<uint8_t> strings;
  std::vector<uint32_t> stringEnds;
  std::vector<int32_t> entries;
  std::vector<int32_t> frames;
};

constexpr size_t kFrameInts = 4;

EncodedResults Encode(const std::vector<AddrResult>& results) {
  EncodedResults out;
  // Keys point into `results`, which outlives the map.
  std::unordered_map<std::string_view, int32_t> ids;
  auto intern = [&](const std::string& s) -> int32_t {
    auto [it, added] = ids.emplace(s, static_cast<int32_t>(out.stringEnds.size()));
    if (added) {
      out.strings.insert(out.strings.end(), s.begin(), s.end());
      if (out.strings.size() > UINT32_MAX || out.stringEnds.size() >= INT32_MAX)
        throw std::length_error("too many results");
      out.stringEnds.push_back(static_cast<uint32_t>(out.strings.size()));
    }
    return it->second;
  };
  out.entries.reserve(results.size() * 2);
  for (const AddrResult& r : results) {
    if (r.failed) {
      out.entries.push_back(-1);
      out.entries.push_back(intern(r.error));
      continue;
    }
    size_t first = out.frames.size() / kFrameInts;
    if (first + r.frames.size() > INT32_MAX) throw std::length_error("too many results");
    out.entries.push_back(static_cast<int32_t>(first));
    out.entries.push_back(static_cast<int32_t>(r.frames.size()));
    for (const Frame& f : r.frames) {
      out.frames.push_back(f.symbol.empty() ? -1 : intern(f.symbol));
      out.frames.push_back(f.file.empty() ? -1 : intern(f.file));
      out.frames.push_back(f.line > 0 ? f.line : 0);
      out.frames.push_back(f.inlined ? 1 : 0);
    }
  }
  return out;
}

Napi::Object EncodedToJs(Napi::Env env, EncodedResults&& e) {
  using ebpf_leak::TakeAsTypedArray;
  Napi::Object out = Napi::Object::New(env);
  out.Set("strings", TakeAsTypedArray(env, std::move(e.strings)));
  out.Set("stringEnds", TakeAsTypedArray(env, std::move(e.stringEnds)));
  out.Set("entries", TakeAsTypedArray(env, std::move(e.entries)));
  out.Set("frames", TakeAsTypedArray(env, std::move(e.frames)));
  return out;
}

class SymbolizeWorker : public Napi::AsyncWorker {
 public:
  SymbolizeWorker(Napi::Env env, Request req)
      : Napi::AsyncWorker(env, "ebpf-leak:symbolize"),
        deferred_(Napi::Promise::Deferred::New(env)),
        req_(std::move(req)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      encoded_ = Encode(RunRequest(req_));
    } catch (const std::exception& e) {
      SetError(std::string("symbolize failed: ") + e.what());
    } catch (...) {
      SetError("symbolize failed");
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    try {
      deferred_.Resolve(EncodedToJs(env, std::move(encoded_)));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (const std::exception& e) {
      deferred_.Reject(Napi::Error::New(env, e.what()).Value());
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Request req_;
  EncodedResults encoded_;
};

Napi::Value Symbolize(const Napi::CallbackInfo& info) {
  Request req = ParseRequest(info);
  return ebpf_leak::QueueForPromise(new SymbolizeWorker(info.Env(), std::move(req)));
}

Napi::Value ReadBuildId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info[0], "path");
  EnsureElfVersion();
  struct stat st;
  std::string err;
  int fd = OpenRegularFile(path, &st, &err);
  if (fd < 0) return env.Null();
  std::string id;
  if (Elf* elf = elf_begin(fd, ELF_C_READ, nullptr)) {
    if (elf_kind(elf) == ELF_K_ELF) id = BuildIdOf(elf);
    elf_end(elf);
  }
  close(fd);
  if (id.empty()) return env.Null();
  return Napi::String::New(env, id);
}

}  // namespace

void InitSymbolizer(Napi::Env env, Napi::Object exports) {
  exports.Set("symbolize", Napi::Function::New(env, Symbolize, "symbolize"));
  exports.Set("readBuildId", Napi::Function::New(env, ReadBuildId, "readBuildId"));
}
