#include "uprobe_multi.h"

#include <linux/bpf.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ebpf_leak {

namespace {

// BPF_LINK_CREATE's attributes for uprobe_multi, laid out as in the kernel's uapi <linux/bpf.h>
// (6.6+); the installed header is older and does not have them.
struct UprobeMultiLinkAttr {
  uint32_t prog_fd;
  uint32_t target_fd;
  uint32_t attach_type;
  uint32_t flags;
  uint64_t path;
  uint64_t offsets;
  uint64_t ref_ctr_offsets;
  uint64_t cookies;
  uint32_t cnt;
  uint32_t multi_flags;
  uint32_t pid;
};
constexpr uint32_t kUprobeMultiReturn = 1;  // BPF_F_UPROBE_MULTI_RETURN

}  // namespace

int CreateUprobeMultiLink(int prog_fd, const std::string& path,
                          const std::vector<uint64_t>& offsets,
                          const std::vector<uint64_t>& cookies, bool retprobe, int32_t pid) {
  union {
    bpf_attr attr;
    UprobeMultiLinkAttr multi;
    char bytes[sizeof(bpf_attr) > sizeof(UprobeMultiLinkAttr) ? sizeof(bpf_attr)
                                                                : sizeof(UprobeMultiLinkAttr)];
  } u;
  memset(&u, 0, sizeof u);
  u.multi.prog_fd = static_cast<uint32_t>(prog_fd);
  u.multi.attach_type = kBpfTraceUprobeMulti;
  u.multi.path = reinterpret_cast<uint64_t>(path.c_str());
  u.multi.offsets = reinterpret_cast<uint64_t>(offsets.data());
  u.multi.cookies = reinterpret_cast<uint64_t>(cookies.data());
  u.multi.cnt = static_cast<uint32_t>(offsets.size());
  u.multi.multi_flags = retprobe ? kUprobeMultiReturn : 0;
  u.multi.pid = static_cast<uint32_t>(pid);
  long fd = syscall(__NR_bpf, BPF_LINK_CREATE, &u, sizeof u);
  return fd < 0 ? -errno : static_cast<int>(fd);
}

}  // namespace ebpf_leak
