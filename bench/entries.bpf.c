// SPDX-License-Identifier: GPL-2.0 OR MIT
/* The bench's count of kernel entries (bench/entries.c) of the threads of processes named `comm`:
 * their system calls, among them the uretprobe syscall (a return through the uretprobe trampoline)
 * and the uprobe syscall (an optimized uprobe). Counts do not depend on how busy the machine is,
 * where time does. (fentry on the kernel's uprobe functions is refused on some kernels: this
 * counts at the sys_enter raw tracepoint, which every kernel with uprobes has, attached without
 * tracefs.) */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

const volatile char comm[16] = {};
const volatile long uretprobe_nr = 335; /* x86-64 */
const volatile long uprobe_nr = 336;

enum { SYSCALLS, URETPROBE_SYSCALLS, UPROBE_SYSCALLS, COUNTS };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, COUNTS);
} counts SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&counts, &what);

	if (n)
		*n += 1;
}

SEC("raw_tp/sys_enter")
int BPF_PROG(syscall_enter, struct pt_regs *regs, long id)
{
	char name[16];

	bpf_get_current_comm(name, sizeof(name));
	for (int i = 0; i < 16; i++) {
		if (name[i] != comm[i])
			return 0;
		if (!name[i])
			break;
	}
	count(SYSCALLS);
	if (id == uretprobe_nr)
		count(URETPROBE_SYSCALLS);
	else if (id == uprobe_nr)
		count(UPROBE_SYSCALLS);
	return 0;
}
