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

/* Uprobe sessions (bench/floor.c --session-keep, --session-decline): one program at the entry and
 * the return; an entry that returns nonzero declines the return for that call. SEC("uprobe"): the
 * libbpf this builds with predates "uprobe.session"; floor.c sets the attach type. */
SEC("uprobe")
int floor_session_keep(void *ctx)
{
	return 0;
}

SEC("uprobe")
int floor_session_decline(void *ctx)
{
	return 1;
}
