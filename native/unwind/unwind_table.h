// Compact unwind tables for the BPF stack walker (bpf/unwind.bpf.h), built from a module's DWARF CFI
// (.eh_frame, else .debug_frame) with elfutils' libdw: which rule finds the caller's frame, for
// every code range of the module, keyed by file offset. See bpf/abi/unwind_types.h for the rules.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "abi/unwind_types.h"

namespace ebpf_leak {

struct UnwindRow {
  uint32_t off;  // file offset where the rule starts to apply (up to the next row)
  leak_unwind_rule rule;
};

struct UnwindTable {
  // Rows sorted by offset, adjacent equal rules merged; a range no FDE covers starts with a row
  // whose rule has cfa_type LEAK_CFA_NONE.
  std::vector<UnwindRow> rows;
  size_t fdes = 0;
  // FDEs with a row that computes the CFA from rbp: functions that set up a frame pointer.
  size_t rbp_fdes = 0;
  // Most functions keep a frame pointer: the frame-pointer walk is right at their call sites.
  bool keeps_frame_pointers = false;
  // Why there are no rows (no CFI, not an ELF file, ...); empty when there are.
  std::string error;
};

// The table of the ELF file open on `fd` (not closed). Tables are cached for the life of the
// process by file identity (device, inode, size, mtime): a library is read once however many
// tracers meet it.
std::shared_ptr<const UnwindTable> GetUnwindTable(int fd);

// The same for a path; nullptr when it cannot be opened.
std::shared_ptr<const UnwindTable> GetUnwindTable(const std::string& path);

// Kernel dev_t encoding (major << 20 | minor, as in struct super_block's s_dev) of a user-space
// st_dev.
uint64_t KernelDev(uint64_t st_dev);

}  // namespace ebpf_leak
