// The stack walker's settings, as lib/ gives them (lib/tracer/options.ts owns the defaults).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "abi/unwind_types.h"

namespace ebpf_leak {

struct UnwindOptions {
  // enum leak_unwind_mode.
  uint32_t mode = LEAK_UNWIND_FP;
  // Files whose tables are loaded before a `command` target runs (its executable, its loader and
  // the libraries the loader will map: lib/target/resolve.ts asks `ld.so --list`).
  std::vector<std::string> files;
  // Most rows `unwind_rows` may hold (8 bytes each). It is sized for the tables loaded at attach
  // plus room for later modules (a C++ program's modules have ~75,000 rows, node's ~400,000).
  uint32_t table_rows = 0;
  // Keep outstanding bytes and blocks per stack in the kernel (bpf/stack_totals.bpf.h).
  bool stack_totals = false;
};

}  // namespace ebpf_leak
