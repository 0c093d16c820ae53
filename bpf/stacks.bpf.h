/* The stacks of allocations (and of heap errors' releases): the CFI walk of bpf/unwind.bpf.h when
 * it is on, else the kernel's frame-pointer walk into `stack_traces`, with `overflow_stacks` for
 * the stacks whose bucket there is taken. The first time a stack is stored, the mappings its
 * frames are in go to bpf/modules.bpf.h for the symbolizer. User space reads the stacks back by id
 * (native/tracer/trace_session_reads.cc). */
#ifndef EBPF_LEAK_STACKS_H
#define EBPF_LEAK_STACKS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "abi/leak.h"
#include "counters.bpf.h"
#include "modules.bpf.h"
#include "unwind.bpf.h"

#ifndef EEXIST
#define EEXIST 17 /* vmlinux.h has no errno values */
#endif

/* Set by user space before load. */
const volatile bool capture_stacks = false;
const volatile __u32 stack_depth = 32; /* frames per stack: stack_traces' value size / 8 */

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 32 * sizeof(__u64)); /* depth, resized from options before load */
	__uint(max_entries, 65536);
} stack_traces SEC(".maps");

/* Stacks that bpf_get_stackid() could not store because their hash bucket in `stack_traces` holds
 * another stack (-EEXIST: the kernel's stack map keeps one stack per bucket). A process with many
 * distinct stacks (Node.js tracing itself: JIT frames) collides in a few percent of its
 * allocations, and always at the same call sites, which would then never have a stack. Their
 * stacks go here instead, keyed by LEAK_OVERFLOW_STACK_TAG | a 52-bit hash of the frames. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, sizeof(__u64));
	__uint(value_size, 32 * sizeof(__u64)); /* = stack_traces' value size, set before load */
	__uint(max_entries, 65536);		 /* = stack_traces' max_entries, set before load */
} overflow_stacks SEC(".maps");

/* Which stack ids already had their mappings recorded: index = stack id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 65536); /* = stack_traces' max_entries, set before load */
} stacks_seen SEC(".maps");

/* Scratch space too large for the BPF stack. */
struct stack_scratch {
	__u64 frames[LEAK_MAX_STACK_DEPTH + 1]; /* a power of two: indexes are masked, not compared */
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct stack_scratch);
	__uint(max_entries, 1);
} scratch SEC(".maps");

static long record_frame_mapping(__u32 i, void *data)
{
	__u32 zero = 0;
	struct stack_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	__u64 ip;

	if (!s)
		return 1;
	ip = s->frames[i & LEAK_MAX_STACK_DEPTH];
	if (!ip)
		return 1; /* stop */
	bpf_find_vma(bpf_get_current_task_btf(), ip, record_mapping, NULL, 0);
	return 0;
}

/* First time a stack is seen: record the mappings its frames are in. Paid once per call site. */
static __always_inline void record_stack_mappings(struct pt_regs *ctx, __s64 stack_id)
{
	__u32 key = stack_id, zero = 0;
	__u32 *seen = bpf_map_lookup_elem(&stacks_seen, &key);
	struct stack_scratch *s;
	long n;

	if (!seen || *seen)
		return;
	*seen = 1;
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return;
	n = bpf_get_stack(ctx, s->frames, sizeof(s->frames), BPF_F_USER_STACK);
	if (n <= 0)
		return;
	bpf_loop(n / sizeof(__u64), record_frame_mapping, NULL, 0);
}

/* A stack whose bucket in `stack_traces` is taken: stored in `overflow_stacks` under a hash of its
 * frames (FNV-1a over the words, then a murmur3 finalizer). The first time a hash is stored, the
 * stack's mappings are recorded, as for `stack_traces` ids. */
static __always_inline __s64 overflow_stack(struct pt_regs *ctx)
{
	__u32 zero = 0;
	struct stack_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	__u64 h = 0xcbf29ce484222325ULL, key;
	__u32 size = stack_depth * sizeof(__u64);
	long n;

	if (!s || size > sizeof(s->frames))
		return -1;
	/* Zero-fills the buffer past the last frame, up to `size`: the stored value ends in zeros. */
	n = bpf_get_stack(ctx, s->frames, size, BPF_F_USER_STACK);
	if (n <= 0)
		return -1;
	n /= sizeof(__u64);
	for (__u32 i = 0; i < LEAK_MAX_STACK_DEPTH + 1; i++) {
		if (i >= n)
			break;
		h ^= s->frames[i & LEAK_MAX_STACK_DEPTH];
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	key = LEAK_OVERFLOW_STACK_TAG | (h & (LEAK_OVERFLOW_STACK_TAG - 1));
	if (bpf_map_update_elem(&overflow_stacks, &key, s->frames, BPF_NOEXIST) == 0)
		bpf_loop(n, record_frame_mapping, NULL, 0);
	else if (!bpf_map_lookup_elem(&overflow_stacks, &key))
		return -1; /* not there, and could not be added: the map is full */
	return key;
}

/* Taken in the return probe: there the caller is the innermost frame. (At the entry, the caller's
 * return address is only at the top of the stack, and a frame-pointer walk skips it.) */
static __always_inline __s64 alloc_stack(struct pt_regs *ctx, __u32 tid)
{
	__s64 id;

	if (!capture_stacks)
		return -1;
	if (unwind_stack(ctx, tid, &id)) { /* the CFI walk (bpf/unwind.bpf.h) took it */
		if (id < 0)
			COUNT(stack_failures, 1);
		return id;
	}
	id = bpf_get_stackid(ctx, &stack_traces, BPF_F_USER_STACK);
	if (id == -EEXIST)
		id = overflow_stack(ctx);
	else if (id >= 0)
		record_stack_mappings(ctx, id);
	if (id < 0) {
		COUNT(stack_failures, 1);
		return -1;
	}
	return id;
}

/* The stack of a call whose return address is at `sp`, taken from deeper down (an entry-only
 * operator new's block, seen at the return of the malloc it called): from the operator's caller,
 * as a return probe on the operator would take it. (With frame pointers only, the kernel's walk
 * misses that caller, as it does for a release's stack at an entry.) */
static __always_inline __s64 caller_stack(struct pt_regs *ctx, __u64 sp, __u32 tid)
{
	__u64 ra;
	__s64 id;

	if (!capture_stacks)
		return -1;
	if (bpf_probe_read_user(&ra, sizeof(ra), (void *)sp)) {
		COUNT(stack_failures, 1);
		return -1;
	}
	if (unwind_stack_from(ra, sp + 8, PT_REGS_FP(ctx), tid, PT_REGS_IP(ctx), &id)) {
		if (id < 0)
			COUNT(stack_failures, 1);
		return id;
	}
	id = bpf_get_stackid(ctx, &stack_traces, BPF_F_USER_STACK | 1 /* inside the operator */);
	if (id >= 0)
		record_stack_mappings(ctx, id);
	if (id < 0) {
		COUNT(stack_failures, 1);
		return -1;
	}
	return id;
}

#endif /* EBPF_LEAK_STACKS_H */
