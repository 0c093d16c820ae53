/* Outstanding bytes and blocks per allocation stack, kept in the kernel: + on every recorded
 * allocation, - when its block is freed (with the stack id stored in the block), so a summary by
 * stack is one small map read instead of a walk of every outstanding block.
 *
 * Read by user space with Tracer.readStackTotals() (native/tracer/trace_session_reads.cc). */
#ifndef EBPF_LEAK_STACK_TOTALS_H
#define EBPF_LEAK_STACK_TOTALS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "abi/unwind_types.h"
#include "unwind.bpf.h" /* UNWIND_COUNT: the drops are the walker's counters */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __s64); /* stack id; -1: no stack */
	__type(value, struct leak_stack_total);
	__uint(max_entries, 131073); /* both kinds of stack ids, and -1; set before load */
} stack_totals SEC(".maps");

/* Off (user space: stackTotals: false), the bookkeeping compiles away: the verifier prunes it. */
const volatile bool keep_stack_totals = true;

static __always_inline void stack_totals_add(__s64 stack_id, __s64 bytes, __s64 blocks)
{
	struct leak_stack_total *t;

	if (!keep_stack_totals)
		return;
	t = bpf_map_lookup_elem(&stack_totals, &stack_id);
	if (!t) {
		struct leak_stack_total zero = {};

		/* EEXIST: another CPU inserted it meanwhile; the lookup finds theirs. */
		bpf_map_update_elem(&stack_totals, &stack_id, &zero, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&stack_totals, &stack_id);
		if (!t) {
			UNWIND_COUNT(totals_dropped, 1);
			return;
		}
	}
	__sync_fetch_and_add(&t->bytes, bytes);
	__sync_fetch_and_add(&t->blocks, blocks);
}

#endif /* EBPF_LEAK_STACK_TOTALS_H */
