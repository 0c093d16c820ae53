// The facts lib/placement.ts needs about a function's first instructions, from Zydis (Debian's
// libzydis-dev): length, AT&T text, control flow, direct branch target, registers written
// (implicit writes included). The placement rules themselves are in TypeScript.
#pragma once

#include <napi.h>

namespace ebpf_leak {

// decodeX86(code: Uint8Array, address: number, detailBytes: number) => NativeX86Instruction[]
// (see lib/native.ts). Every instruction that starts in the first `detailBytes`, and after that
// only those that do not fall through (branches, calls, returns, ...). Synchronous: the callers
// decode a few kilobytes, microseconds of work.
Napi::Value DecodeX86(const Napi::CallbackInfo& info);

}  // namespace ebpf_leak
