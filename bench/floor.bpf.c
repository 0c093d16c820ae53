// SPDX-License-Identifier: GPL-2.0 OR MIT
/* The bench's floor: programs that do nothing, attached where ebpf-leak attaches its own, so
 * what a run costs above untraced is the probes themselves (traps, emulation or single-step,
 * uretprobe trampolines, program dispatch), not ebpf-leak's work in them. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

SEC("uprobe")
int floor_entry(void *ctx)
{
	return 0;
}

SEC("uretprobe")
int floor_exit(void *ctx)
{
	return 0;
}
