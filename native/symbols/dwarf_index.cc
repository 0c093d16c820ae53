#include "symbols/dwarf_index.h"

#include <dwarf.h>

#include <algorithm>

namespace ebpf_leak::symbols {

constexpr size_t kMaxDiesPerCu = 1u << 25;  // a CU walk stops here (corrupt/cyclic DWARF)
constexpr size_t kMaxRangesPerDie = 1u << 16;

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

bool HasLinkageName(Dwarf_Die* die) {
  Dwarf_Attribute attr;
  return dwarf_attr_integrate(die, DW_AT_linkage_name, &attr) != nullptr ||
         dwarf_attr_integrate(die, DW_AT_MIPS_linkage_name, &attr) != nullptr;
}

// Tags whose children can hold code ranges: the only subtrees the CU walk descends into.
static bool MayContainCode(int tag) {
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

}  // namespace ebpf_leak::symbols
