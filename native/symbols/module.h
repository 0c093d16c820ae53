// One ELF module opened for symbolization: its libdwfl handle, its debug files found and checked,
// its symbol and DWARF indexes, and the frames of each offset asked for, cached.
#pragma once

#include <elfutils/libdwfl.h>
#include <sys/stat.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "symbols/dwarf_index.h"
#include "symbols/module_files.h"

namespace ebpf_leak::symbols {

struct Frame {
  std::string symbol;
  std::string mangled;  // what `symbol` was demangled from, when it was
  std::string file;
  int line = 0;
  bool inlined = false;
};

struct AddrResult {
  bool failed = false;
  std::string error;
  std::vector<Frame> frames;
};

inline AddrResult Failure(std::string message) {
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

class Module {
 public:
  Module(std::string path, const std::vector<std::string>& userDirs);

  ~Module();

  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const struct stat& Stat() const { return st_; }

  // Takes ownership of fd.
  void Open(int fd, const struct stat& st);

  AddrResult Lookup(uint64_t offset);

  // What the first Lookup() would build: the symbol index (Open() has read the debug files).
  void Prepare() {
    if (!symIndexBuilt_) BuildSymbolIndex();
  }

  // find_elf: hand libdwfl the Elf we opened and validated (it takes ownership of both).
  int TakeMainElf(char** fileName, Elf** elfp);

  // find_debuginfo for the module itself (debuglink = its .gnu_debuglink) or for a dwz alternate
  // file (debuglink = the .gnu_debugaltlink path recorded in the main or debug file).
  int FindDebugFile(const char* fileName, const char* debuglink, GElf_Word crc, char** outName);

 private:
  void AddDebugDir(const std::string& d);

  int TryDebugCandidate(const std::string& path, const std::string& wantId, GElf_Word crc,
                        bool recordAltLink);

  CuIndex* CuIndexFor(Dwarf_Die* cudie);

  void BuildSymbolIndex();

  const char* LookupSymbol(uint64_t addr);

  AddrResult Compute(uint64_t offset);

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

}  // namespace ebpf_leak::symbols
