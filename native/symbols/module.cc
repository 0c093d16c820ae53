#include "symbols/module.h"
#include "symbols/demangle.h"
#include "target/target_file.h"

#include <dwarf.h>
#include <elfutils/libdwelf.h>
#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace ebpf_leak::symbols {

constexpr size_t kMaxCachedOffsetsPerModule = 1u << 20;
constexpr size_t kMaxInlineDepth = 256;

namespace {

int FindElfCallback(Dwfl_Module*, void**, const char*, Dwarf_Addr, char**, Elf**);
int FindDebuginfoCallback(Dwfl_Module*, void**, const char*, Dwarf_Addr, const char*, const char*,
                          GElf_Word, char**);

const Dwfl_Callbacks kCallbacks = {
    FindElfCallback,
    FindDebuginfoCallback,
    dwfl_offline_section_address,
    nullptr,
};

}  // namespace

Module::Module(std::string path, const std::vector<std::string>& userDirs) : path_(std::move(path)) {
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

Module::~Module() {
  if (dwfl_ != nullptr) dwfl_end(dwfl_);
  if (pendingElf_ != nullptr) elf_end(pendingElf_);
  if (pendingFd_ >= 0) close(pendingFd_);
}

void Module::Open(int fd, const struct stat& st) {
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

AddrResult Module::Lookup(uint64_t offset) {
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

int Module::TakeMainElf(char** fileName, Elf** elfp) {
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

int Module::FindDebugFile(const char* fileName, const char* debuglink, GElf_Word crc, char** outName) {
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

void Module::AddDebugDir(const std::string& d) {
  if (d.empty() || d.find('\0') != std::string::npos) return;
  std::string dir = d;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (std::find(debugDirs_.begin(), debugDirs_.end(), dir) == debugDirs_.end())
    debugDirs_.push_back(dir);
}

int Module::TryDebugCandidate(const std::string& path, const std::string& wantId, GElf_Word crc,
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

CuIndex* Module::CuIndexFor(Dwarf_Die* cudie) {
  Dwarf_Off key = dwarf_dieoffset(cudie);
  auto it = cuIndex_.find(key);
  if (it != cuIndex_.end()) return it->second.get();
  auto built = BuildCuIndex(cudie);
  CuIndex* p = built.get();
  cuIndex_.emplace(key, std::move(built));
  return p;
}

void Module::BuildSymbolIndex() {
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

const char* Module::LookupSymbol(uint64_t addr) {
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

AddrResult Module::Compute(uint64_t offset) {
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
      if (symName != nullptr && f.symbol != symName) f.mangled = symName;
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
      if (k + 1 == chain.size()) {
        // A C++ function with internal linkage has no DW_AT_linkage_name, only its plain name;
        // its symbol is mangled (_ZL3foov), and that is what valgrind shows ("foo()") and what
        // suppression files name it by.
        const char* symbol = LookupSymbol(addr);
        if (name == nullptr || (!HasLinkageName(&die) && symbol != nullptr && strncmp(symbol, "_Z", 2) == 0 &&
                                strncmp(ebpf_leak::DemangleForDisplay(symbol).c_str(), name, strlen(name)) == 0))
          name = symbol != nullptr ? symbol : name;
      }
      f.symbol = ebpf_leak::DemangleForDisplay(name);
      if (name != nullptr && f.symbol != name) f.mangled = name;
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

namespace {

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

}  // namespace

}  // namespace ebpf_leak::symbols
