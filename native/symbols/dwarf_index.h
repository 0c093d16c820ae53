// A compile unit's functions and inlined instances, indexed by pc range in one walk of its DIE
// tree, and the names a DIE goes by.
#pragma once

#include <elfutils/libdw.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace ebpf_leak::symbols {

constexpr size_t kMaxBackwardScan = 1u << 16;  // interval lookups give up after this many steps

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

const char* DieName(Dwarf_Die* die);
bool HasLinkageName(Dwarf_Die* die);
std::unique_ptr<CuIndex> BuildCuIndex(Dwarf_Die* cudie);
int InnermostNode(const CuIndex& ci, uint64_t pc);

}  // namespace ebpf_leak::symbols
