// What the tracer needs to know about an ELF file before probing it: is it dynamically linked
// (its interpreter), which libraries it names, and where given functions are in the file.
#pragma once

#include <napi.h>

namespace ebpf_leak {

// readElf(path: string, symbols: string[], imports?: string[]) => ElfInfo (see lib/native/addon.ts)
Napi::Value ReadElf(const Napi::CallbackInfo& info);

}  // namespace ebpf_leak
