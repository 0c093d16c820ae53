// The files a module's symbols come from, read safely: a module and its debug files are named by a
// traced, possibly hostile, process (see "Safety" in symbolizer.cc).
#pragma once

#include <gelf.h>
#include <libelf.h>
#include <sys/stat.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace ebpf_leak::symbols {

constexpr uint64_t kMaxDebugFileBytes = 4ull << 30;  // larger debug files are not loaded

std::string Hex(const void* data, size_t len);
std::string HexNum(uint64_t v);
void EnsureElfVersion();
std::string ElfError();
std::string DwflError();
std::string Dirname(const std::string& path);

int OpenRegularFile(const std::string& path, struct stat* st, std::string* err);
bool SameFile(const struct stat& a, const struct stat& b);
std::string ValidateElf(Elf* elf, uint64_t fileSize, bool checkSegments);
std::string BuildIdOf(Elf* elf);

// A dwz alternate debug file (.gnu_debugaltlink): its path and build ID.
struct AltLink {
  std::string name;
  std::string buildId;
};
bool ReadAltLink(Elf* elf, AltLink* out);

int CopyToMemfd(const std::string& path, struct stat* st, std::string* err);
uint32_t Crc32OfFd(int fd, uint64_t size, bool* ok);

}  // namespace ebpf_leak::symbols
