/* The counters every run reports (struct leak_counters): per CPU, summed by user space. With
 * follow_forks or image_keys each traced process or image has counters of its own
 * (bpf/traced_processes.bpf.h); the global ones count the rest. */
#ifndef EBPF_LEAK_COUNTERS_H
#define EBPF_LEAK_COUNTERS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "abi/leak.h"
#include "traced_processes.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct leak_counters);
	__uint(max_entries, 1);
} counters SEC(".maps");

static __always_inline struct leak_counters *counters_cpu(void)
{
	struct leak_counters *own = process_counters_cpu();
	__u32 zero = 0;

	if (own)
		return own;
	return bpf_map_lookup_elem(&counters, &zero);
}

/* Per-CPU, but a uprobe program can be preempted by another on the same CPU: add atomically. */
#define COUNT(field, n)                                                        \
	do {                                                                   \
		struct leak_counters *c__ = counters_cpu();                    \
		if (c__)                                                       \
			__sync_fetch_and_add(&c__->field, (n));                \
	} while (0)

#endif /* EBPF_LEAK_COUNTERS_H */
