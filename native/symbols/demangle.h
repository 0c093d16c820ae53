// C++ (Itanium ABI) names as people read them, for stack frames and for suppression rules
// written with mangled names as valgrind writes them.
#pragma once

#include <optional>
#include <string>

namespace ebpf_leak {

// The demangled form of `name` when it is a mangled function or variable name (`_Z...`);
// nothing when it is not one or does not demangle. Names past 64 KiB are not demangled.
std::optional<std::string> DemangleMangled(const char* name);

// What a frame shows: the demangled form, or `name` itself (cut at 64 KiB).
std::string DemangleForDisplay(const char* name);

}  // namespace ebpf_leak
