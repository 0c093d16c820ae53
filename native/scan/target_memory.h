// The memory of a stopped process, read from outside (process_vm_readv): its mappings, and copies
// of the ranges the scan needs.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ebpf_leak {

struct Mapping {
  uint64_t start = 0, end = 0;
  bool read = false, write = false, exec = false, shared = false;
  bool file = false;    // backed by a file (not anonymous, not [heap]/[stack]/...)
  bool device = false;  // a character or block device other than /dev/zero: never read
  std::string path;     // as /proc/PID/maps shows it ("[heap]", "[stack]", "" when anonymous)
};

// /proc/PID/maps, in address order. False when the process is gone.
bool ReadMappings(pid_t pid, std::vector<Mapping>* out);

// The mapping holding `address`, or null.
const Mapping* MappingAt(const std::vector<Mapping>& maps, uint64_t address);

// Copies [address, address + length) of `pid` into `out`. Pages that cannot be read are zeros.
// Returns the bytes that could be read.
size_t ReadRemote(pid_t pid, uint64_t address, size_t length, void* out);

// Reads one word; false when it cannot be read.
bool ReadRemoteWord(pid_t pid, uint64_t address, uint64_t* value);

}  // namespace ebpf_leak
