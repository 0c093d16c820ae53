/* malloc and calloc calls between their entry and their return, keyed by the stack pointer at the
 * entry: what the return needs (the size, the function) is found again without per-thread state.
 *
 * Per-thread state (task storage, `inflight` in bpf/leak.bpf.c) takes helper calls to reach: the
 * current task, then the storage lookup with its recursion guard. A call and return inside the
 * kernel is not cheap where the kernel returns through a thunk (the SRSO "safe RET" mitigation of
 * AMD CPUs): bpf_stats measured about 25 ns per helper call, more than the rest of a probe. The
 * stack pointer tells calls in flight apart just as well: threads have stacks of their own, and
 * a thread's calls in flight sit at different depths. The return finds its slot from its own
 * stack pointer (on x86-64 the `ret` popped the return address: 8 bytes higher).
 *
 * A slot another call holds (a hash collision; a call whose return was never seen, a longjmp out
 * of the allocator) sends the new call the slow way, through `inflight`; so does every call while
 * some call of the slow kind is in flight, so that nested calls are still told apart there. */
#ifndef EBPF_LEAK_CALLS_IN_FLIGHT_H
#define EBPF_LEAK_CALLS_IN_FLIGHT_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define CALL_SLOT_BITS 12
#define CLOCK_TICK_NS 10000000ULL /* how often user space advances `now_ns` (kClockTickMs) */
/* call_slot_take()'s answers that are not a size_fn (whose top byte is a function, below 16). */
#define CALL_SLOT_NONE (~0ULL)	    /* no slot: the call went the slow way */
#define CALL_SLOT_NESTED (~0ULL - 1) /* a nested tail call: its outer call's return records it */

#if defined(__TARGET_ARCH_x86)
#define RETURN_SP_OFFSET 8 /* the return address the entry's stack pointer pointed at */
#else
#define RETURN_SP_OFFSET 0 /* a link register: the stack pointer is the entry's */
#endif

struct call_slot {
	__u64 sp;      /* stack pointer at the entry; 0: free */
	__u64 size_fn; /* size | fn << LEAK_SIZE_BITS, as in struct leak_slot */
	__u64 nested;  /* tail calls into another such function, whose returns come first */
	__u64 entered_ns; /* `now_ns` at the entry */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct call_slot);
	__uint(max_entries, 1 << CALL_SLOT_BITS);
} calls_in_flight SEC(".maps");

static __always_inline struct call_slot *call_slot_at(__u64 sp)
{
	__u32 i = (__u32)(((sp >> 4) * 0x9e3779b97f4a7c15ULL) >> (64 - CALL_SLOT_BITS));

	return bpf_map_lookup_elem(&calls_in_flight, &i);
}

/* Outcomes of call_slot_claim(). */
#define SLOT_CLAIMED 0
#define SLOT_NESTED 1 /* a tail call from the call holding the slot: its return comes first */
#define SLOT_STALE 2  /* claimed over a call at this depth whose return was never seen */
#define SLOT_BUSY 3   /* another call holds it: go the slow way */

/* Claims a slot for the call entered at `sp`. A slot holding a call entered at this very `sp`
 * moments ago (this tick of `now_ns` or the last: a tail call jumps in within nanoseconds) is a
 * tail call from it; longer ago, a call that was left with a longjmp. */
static __always_inline int call_slot_claim(__u64 sp, __u64 size_fn, __u64 now)
{
	struct call_slot *s = call_slot_at(sp);
	int outcome = SLOT_CLAIMED;

	if (!s)
		return SLOT_BUSY;
	if (s->sp == sp) {
		if (now - s->entered_ns <= 2 * CLOCK_TICK_NS) {
			s->nested++;
			return SLOT_NESTED;
		}
		outcome = SLOT_STALE;
	} else if (s->sp || __sync_val_compare_and_swap(&s->sp, 0, sp) != 0) {
		return SLOT_BUSY;
	}
	s->size_fn = size_fn;
	s->nested = 0;
	s->entered_ns = now;
	return outcome;
}

/* The size_fn of the call returning with stack pointer `return_sp`, its slot released; or
 * CALL_SLOT_NONE, CALL_SLOT_NESTED. */
static __always_inline __u64 call_slot_take(__u64 return_sp)
{
	__u64 sp = return_sp - RETURN_SP_OFFSET, size_fn;
	struct call_slot *s = call_slot_at(sp);

	if (!s || s->sp != sp)
		return CALL_SLOT_NONE;
	if (s->nested) {
		s->nested--;
		return CALL_SLOT_NESTED;
	}
	size_fn = s->size_fn;
	/* Read before the release: after it, another thread may claim the slot and write it. */
#if defined(__TARGET_ARCH_x86)
	asm volatile("" ::: "memory");
	*(volatile __u64 *)&s->sp = 0;
#else
	__sync_lock_test_and_set(&s->sp, 0);
#endif
	return size_fn;
}

#endif /* EBPF_LEAK_CALLS_IN_FLIGHT_H */
