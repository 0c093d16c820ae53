#include "symbols/demangle.h"

#include <cxxabi.h>

#include <cstdlib>
#include <cstring>
#include <memory>

namespace ebpf_leak {

namespace {
// Symbol tables are untrusted input: the demangler's work grows with the name.
constexpr size_t kMaxDemangleInput = 1u << 16;
}  // namespace

std::optional<std::string> DemangleMangled(const char* name) {
  if (name == nullptr) return std::nullopt;
  size_t len = strnlen(name, kMaxDemangleInput + 1);
  if (len > kMaxDemangleInput || len <= 2 || name[0] != '_' || name[1] != 'Z') return std::nullopt;
  int status = -1;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free);
  if (status != 0 || !out) return std::nullopt;
  return std::string(out.get());
}

std::string DemangleForDisplay(const char* name) {
  if (name == nullptr) return "";
  if (auto demangled = DemangleMangled(name)) return *demangled;
  return std::string(name, strnlen(name, kMaxDemangleInput));
}

}  // namespace ebpf_leak
