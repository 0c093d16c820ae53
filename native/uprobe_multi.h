// Multi-uprobe links (kernel >= 6.6): one BPF link attaches a program at many offsets of one
// file. Debian 12's libbpf (1.1) predates them, so the link is created with the bpf() syscall.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ebpf_leak {

// The kernel's attach type for these links (enum bpf_attach_type, ABI-stable).
constexpr uint32_t kBpfTraceUprobeMulti = 48;

// Returns the link's fd, or -errno. `pid` limits the probes to that process; `retprobe` makes
// them uretprobes.
int CreateUprobeMultiLink(int prog_fd, const std::string& path,
                          const std::vector<uint64_t>& offsets,
                          const std::vector<uint64_t>& cookies, bool retprobe, int32_t pid);

}  // namespace ebpf_leak
