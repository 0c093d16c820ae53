#include "tracer/uprobe_multi.h"

#include <errno.h>
#include <linux/bpf.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* BPF_LINK_CREATE's attributes for uprobe_multi, laid out as in the kernel's uapi <linux/bpf.h>
 * (6.6+); the installed header is older and does not have them. */
struct uprobe_multi_link_attr {
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

#define UPROBE_MULTI_RETURN 1 /* BPF_F_UPROBE_MULTI_RETURN */

static int create_link(uint32_t attach_type, int prog_fd, const char *path, const uint64_t *offsets,
		       const uint64_t *cookies, uint32_t count, int retprobe, int32_t pid)
{
	union {
		union bpf_attr attr;
		struct uprobe_multi_link_attr multi;
		char bytes[sizeof(union bpf_attr) > sizeof(struct uprobe_multi_link_attr)
				   ? sizeof(union bpf_attr)
				   : sizeof(struct uprobe_multi_link_attr)];
	} u;
	long fd;

	memset(&u, 0, sizeof(u));
	u.multi.prog_fd = (uint32_t)prog_fd;
	u.multi.attach_type = attach_type;
	u.multi.path = (uint64_t)(uintptr_t)path;
	u.multi.offsets = (uint64_t)(uintptr_t)offsets;
	u.multi.cookies = (uint64_t)(uintptr_t)cookies;
	u.multi.cnt = count;
	u.multi.multi_flags = retprobe ? UPROBE_MULTI_RETURN : 0;
	u.multi.pid = (uint32_t)pid;
	fd = syscall(__NR_bpf, BPF_LINK_CREATE, &u, sizeof(u));
	return fd < 0 ? -errno : (int)fd;
}

int create_uprobe_multi_link(int prog_fd, const char *path, const uint64_t *offsets,
			     const uint64_t *cookies, uint32_t count, int retprobe, int32_t pid)
{
	return create_link(LEAK_BPF_TRACE_UPROBE_MULTI, prog_fd, path, offsets, cookies, count, retprobe, pid);
}

int create_uprobe_session_link(int prog_fd, const char *path, const uint64_t *offsets,
			       const uint64_t *cookies, uint32_t count, int32_t pid)
{
	return create_link(LEAK_BPF_TRACE_UPROBE_SESSION, prog_fd, path, offsets, cookies, count, 0, pid);
}
