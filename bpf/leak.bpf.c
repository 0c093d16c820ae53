// SPDX-License-Identifier: GPL-2.0 OR MIT
/* One file by design: the probe programs and the static helpers they share form one BPF object; its parts with maps of their own are the .bpf.h headers beside it. */
/* Allocation tracking for one process: uprobes on the allocator's entry points record
 * address -> {size, time, thread, stack} in `allocs`; what is still there when the process
 * exits leaked. See bpf/abi/leak.h for the records shared with user space. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "abi/leak.h"
#include "alloc_table.bpf.h"      /* the outstanding blocks: `allocs` */
#include "calls_in_flight.bpf.h"  /* malloc and calloc calls between entry and return */
#include "counters.bpf.h"         /* the counters every run reports */
#include "heap_errors.bpf.h"      /* mismatched, double and invalid frees */
#include "stack_totals.bpf.h"     /* outstanding bytes and blocks per stack */
#include "stacks.bpf.h"           /* allocation stacks, and the mappings they pass through */
#include "traced_processes.bpf.h" /* follow_forks: a key and counters per process */

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Knobs, set by user space between skeleton open and load. */
const volatile __u32 target_tgid = 0;
const volatile bool wait_for_exec = false; /* count only after the target's next exec() */
const volatile bool emit_events = false;
/* Sampling mode (0: off): record an allocation only when it crosses a sampling point, points
 * being on average this many bytes apart (exponentially distributed, as in tcmalloc's heap
 * profiler). Totals stay exact; user space scales the sampled blocks into estimates. */
const volatile __u64 sample_mean_bytes = 0;
/* Wake the reader only once this much is waiting: a wakeup per event costs more than the probe.
 * The reader also polls every few milliseconds, so nothing waits long. */
const volatile __u64 wakeup_bytes = 0;
const volatile __u64 page_size = 4096;
/* Skip allocations made by the threads in `ignored_tids`. Set when a process traces itself (the
 * test-harness case): the tracer's own threads (its poll thread, and libuv worker threads while
 * they run one of its native calls) then allocate inside the target, and must not be reported.
 * Off, the check compiles to nothing: the verifier prunes the branch on a constant. */
const volatile bool filter_threads = false;

/* How the probes are attached (enum leak_attach_mode; user space tries the newest first). */
const volatile __u32 attach_mode = LEAK_ATTACH_UPROBE;
/* 1 + the enum leak_fn of the entry probe at each offset within a page, 0 where there is none or
 * two probed functions share the offset. The probe's address is in the context's ip (the kernel
 * rewinds it to the breakpoint for the handlers), and a mapping keeps the file's offsets within
 * a page: this tells functions apart without bpf_get_attach_cookie(), a helper call, which costs
 * about as much as a map update on CPUs whose kernels return through a safe-RET thunk (SRSO). */
const volatile __u8 fn_at_page_offset[LEAK_PAGE_OFFSETS] = {};

/* Written by user space through the skeleton's .bss while running. */
bool armed = false;
/* At the offset within a page of each site where an operator new's call to the allocator returns:
 * LEAK_RETURN_INTO_ENTRY_ONLY where the operator has an entry probe (only a return there looks up
 * its thread's operator in flight), LEAK_RETURN_INTO_SITE + i where it has none and
 * operator_sites[i] says how to know it. */
__u8 returns_into_operator[LEAK_PAGE_OFFSETS] = {};
struct leak_operator_site operator_sites[LEAK_MAX_OPERATOR_SITES] = {};
/* Entry probes are told apart by their attach cookie only: set once probes on a second allocator
 * file (a new image's) are attached, whose functions sit at other offsets within a page. */
bool cookies_only = false;
__u64 mark = 0;
/* CLOCK_MONOTONIC in ns, updated every few milliseconds by the tracer's poll thread: the time
 * blocks are stamped with. Reading the clock in the probe cost a tenth of its work, and
 * bpf_ktime_get_coarse_ns() is not allowed in uprobe programs. */
__u64 now_ns = 0;
/* Calls in flight that keep their state in `inflight` (bpf/calls_in_flight.bpf.h: every function but
 * malloc and calloc, and those when their slot is taken), over all threads. While there are
 * none, a malloc cannot be nested in another allocator call, and need not look up whether it is. */
__s64 slow_calls = 0;

/* What an allocation call passed on entry, kept until its return: for every function but malloc and
 * calloc, which keep theirs in `calls_in_flight` when they can (bpf/calls_in_flight.bpf.h). `depth`
 * counts nested calls into probed functions (realloc(NULL, n) reaching malloc, memalign reaching
 * malloc, reallocarray reaching realloc): only the outermost call is the user's allocation. */
struct inflight_call {
	__u64 active;	/* between an outermost entry and its return */
	__u64 fn;
	__u64 tid;
	__u64 size;
	__u64 old_ptr;	/* realloc's block */
	__u64 freed_at_entry; /* realloc's p, out of `allocs` since the entry: a free(p) inside is its own */
	__u64 old_state; /* enum old_block_state */
	struct leak_slot old_block; /* OLD_TAKEN: p's record, to count at the return or put back */
	__u64 out_ptr;	/* posix_memalign's result pointer */
	__s64 stack_id;
	__u64 depth;
	__u64 sp;	/* stack pointer at the outermost entry */
	__s64 bytes_until_sample; /* sampling mode: this thread's distance to its next sample */
	__u64 sampling_started;
	/* An entry-only operator new (no return probe) in flight: its block is what its call to the
	 * allocator returns at `op_return` (an absolute address; 0 until the operator that makes the
	 * call has been entered, when one tail-calls another: new[] jumping to new). */
	__u64 op_fn;
	__u64 op_size;
	__u64 op_sp;
	__u64 op_return;
	/* Released by an entry-only operator delete at its entry: the free() or operator delete it
	 * tail-calls finds the block gone, and must know why. */
	__u64 deleted_ptr;
	__u64 deleted_sp;
	/* A probeless operator new's malloc failed (libstdc++ then calls the new-handler and calls
	 * malloc again, with flags the handler left): whether the request was new(0), for the retry
	 * from the same operator frame. */
	__u64 retry_op_sp;
	__u64 retry_zero;
};

/* What realloc's entry did with its block p. */
enum old_block_state {
	OLD_NONE = 0,	 /* no p, or a size that fails without touching it */
	OLD_TAKEN = 1,	 /* taken out of `allocs`, its record in old_block */
	OLD_UNKNOWN = 2, /* not in `allocs`: allocated before tracing, sampled out, or dropped */
	OLD_FREED = 3,	 /* realloc(p, 0): counted as freed at the entry */
};

/* Per thread, in the task itself: freed with the thread. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inflight_call);
} inflight SEC(".maps");

static __always_inline struct inflight_call *thread_call(__u64 flags)
{
	return bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0, flags);
}

/* Threads whose allocations are not recorded (see filter_threads). Their frees still are: a block
 * allocated by another thread may be freed by an ignored one. User space adds and removes tids. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* tid */
	__type(value, __u8);
	__uint(max_entries, LEAK_MAX_IGNORED_THREADS);
} ignored_tids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096); /* resized from options before load */
} events SEC(".maps");

/* nmemb * size; an overflowing product makes glibc fail the call (NULL, ENOMEM) without
 * touching anything, which must not be mistaken for a size of 0 (realloc(p, 0) frees p). */
#define SIZE_OVERFLOW (~0ULL)
/* malloc(1) entered with the zero flag set: new(0) if the caller proves to be a probeless operator
 * new whose `test` of the size set it (struct leak_operator_site), else 1 byte. No malloc of this
 * size succeeds. */
#define SIZE_ONE_OR_NEW_ZERO ((1ULL << 55) | 1)
#define X86_ZERO_FLAG 0x40
static __always_inline __u64 array_bytes(__u64 nmemb, __u64 size)
{
	__u64 limit;

	if (!nmemb)
		return 0;
	limit = ~0ULL / nmemb;
	/* Keeps clang from folding the test into an overflow multiply, which BPF cannot do. */
	asm volatile("" : "+r"(limit));
	if (size > limit)
		return SIZE_OVERFLOW;
	return nmemb * size;
}

/* log2(1 + k/64) in 16.16 fixed point, for the exponential draw below. */
static const __u32 log2_fraction[64] = {
	0, 1466, 2909, 4331, 5732, 7112, 8473, 9814, 11136, 12440, 13727, 14996, 16248,
	17484, 18704, 19909, 21098, 22272, 23433, 24579, 25711, 26830, 27936, 29029, 30109,
	31178, 32234, 33279, 34312, 35334, 36346, 37346, 38336, 39316, 40286, 41246, 42196,
	43137, 44068, 44990, 45904, 46809, 47705, 48593, 49472, 50344, 51207, 52063, 52911,
	53751, 54584, 55410, 56229, 57040, 57845, 58643, 59434, 60219, 60997, 61769, 62534,
	63294, 64047, 64794,
};

static __always_inline __u32 leading_zeros32(__u32 x)
{
	__u32 n = 0;

	if (!(x & 0xffff0000)) { n += 16; x <<= 16; }
	if (!(x & 0xff000000)) { n += 8; x <<= 8; }
	if (!(x & 0xf0000000)) { n += 4; x <<= 4; }
	if (!(x & 0xc0000000)) { n += 2; x <<= 2; }
	if (!(x & 0x80000000)) n += 1;
	return n;
}

/* Bytes to the next sampling point: -ln(U) * mean for U uniform in (0, 1), with a 6-bit
 * table for the logarithm's fraction (an error well under 1%, no floating point in BPF). */
static __always_inline __s64 next_sample_distance(void)
{
	__u32 u = bpf_get_prandom_u32() | 1;
	__u32 n = leading_zeros32(u);
	__u32 m = u << n; /* top bit set: u / 2^32 = (m / 2^32) / 2^n */
	__u64 neg_log2 = ((__u64)(n + 1) << 16) - log2_fraction[(m >> 25) & 63];
	__u64 neg_ln = (neg_log2 * 45426) >> 16; /* x ln 2, 16.16 */

	return (__s64)((sample_mean_bytes * neg_ln) >> 16) + 1;
}

/* Sampling mode: whether an allocation of `size` bytes on this thread is recorded. */
static __always_inline bool sampled(struct inflight_call *thread, __u64 size)
{
	if (!thread->sampling_started) {
		thread->sampling_started = 1;
		thread->bytes_until_sample = next_sample_distance();
	}
	thread->bytes_until_sample -= (__s64)size;
	if (thread->bytes_until_sample > 0)
		return false;
	thread->bytes_until_sample = next_sample_distance();
	return true;
}

/* Multi-uprobe links are created for the target's pid, and the kernel runs their programs for its
 * threads only; classic uprobes are checked here. */
static __always_inline bool is_target(void)
{
	if (follow_forks) /* links for every process: the traced ones are in `traced_procs` */
		return armed && process_traced();
	if (attach_mode != LEAK_ATTACH_UPROBE)
		return armed;
	return (bpf_get_current_pid_tgid() >> 32) == target_tgid && armed;
}

/* The function an entry probe is in: see fn_at_page_offset. */
static __always_inline __u64 probe_fn(struct pt_regs *ctx)
{
	__u8 fn = fn_at_page_offset[PT_REGS_IP(ctx) & (LEAK_PAGE_OFFSETS - 1)];

	if (cookies_only)
		return bpf_get_attach_cookie(ctx) & LEAK_COOKIE_FN_MASK;
	return fn ? fn - 1 : bpf_get_attach_cookie(ctx) & LEAK_COOKIE_FN_MASK;
}

static __always_inline bool thread_ignored(__u32 tid)
{
	if (!filter_threads)
		return false;
	return bpf_map_lookup_elem(&ignored_tids, &tid) != NULL;
}

static __always_inline void emit(__u64 kind, __u64 fn, __u64 address, __u64 size, __u64 ts,
				 __u64 tid, __s64 stack_id)
{
	struct leak_event *e;

	if (!emit_events)
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		COUNT(lost_events, 1);
		return;
	}
	e->kind = kind;
	e->fn = fn;
	e->address = address;
	e->size = size;
	e->timestamp_ns = ts;
	e->tid = tid;
	if (follow_forks) /* which process: tid | tgid << 32 (bpf/abi/leak.h) */
		e->tid |= bpf_get_current_pid_tgid() & 0xffffffff00000000ULL;
	e->stack_id = stack_id;
	bpf_ringbuf_submit(e, bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes
				      ? BPF_RB_FORCE_WAKEUP
				      : BPF_RB_NO_WAKEUP);
}

static __always_inline void record_alloc(__u64 fn, __u64 address, __u64 size, __s64 stack_id,
					 __u32 tid)
{
	struct leak_counters *c = counters_cpu();

	if (c) {
		__sync_fetch_and_add(&c->allocs, 1);
		__sync_fetch_and_add(&c->bytes_allocated, size);
	}
	track_block(address, size | fn << LEAK_SIZE_BITS, now_ns, stack_id,
		      (__u64)(__u32)mark << 32 | tid);
	if (emit_events)
		emit(LEAK_EVENT_ALLOC, fn, address, size, bpf_ktime_get_ns(), tid, stack_id);
}

/* A release of a block some call of this thread released already, at its entry:
 * - realloc(p, 0) and other allocators' moves, whose free(p) inside must not count again as the
 *   free of an unknown block;
 * - an entry-only operator delete, whose tail call (into free(), or delete[] into delete) finds
 *   the block gone; the free() ends it. A tail call runs at the stack pointer of the delete's
 *   entry, a probe placed past a push a few words deeper.
 * Only looked up for releases of unknown blocks, which are rare but for those: the per-thread state
 * costs more than the rest of a free. */
static __always_inline bool released_inside(struct pt_regs *ctx, __u64 fn, __u64 address)
{
	struct inflight_call *call = thread_call(0);
	__u64 sp = PT_REGS_SP(ctx);

	if (!call)
		return false;
	if (fn == LEAK_FN_FREE && call->active && call->freed_at_entry == address)
		return true;
	if (call->deleted_ptr == address && sp <= call->deleted_sp && call->deleted_sp - sp <= 64) {
		if (fn == LEAK_FN_FREE)
			call->deleted_ptr = 0;
		return true;
	}
	return false;
}

/* The free of a block that was in `allocs` (`size` >= 0, already removed) or not (-1). */
static __always_inline void count_free(__u64 fn, __u64 address, __s64 size)
{
	struct leak_counters *c = counters_cpu();

	if (size < 0) {
		/* Sampling mode: most blocks are not recorded, and their frees are still frees. */
		if (c)
			__sync_fetch_and_add(sample_mean_bytes ? &c->frees : &c->unknown_frees, 1);
		return;
	}
	if (c) {
		__sync_fetch_and_add(&c->frees, 1);
		__sync_fetch_and_add(&c->bytes_freed, size);
	}
	if (emit_events)
		emit(LEAK_EVENT_FREE, fn, address, size, bpf_ktime_get_ns(),
		     (__u32)bpf_get_current_pid_tgid(), -1);
}

/* `at_entry`: ctx is the releasing function's entry (else realloc's return). */
static __always_inline void record_free(struct pt_regs *ctx, __u64 fn, __u64 address, bool at_entry)
{
	struct leak_slot block;
	__s64 size = table_take(process_key(address), &block);

	if (size < 0) {
		/* The free() a realloc(p, 0) or an operator delete makes inside, of the block it
		 * released at its entry. (Not that entry's own release: in sampling mode its block is
		 * mostly not recorded, and still a free.) */
		if (released_inside(ctx, fn, address))
			return;
		if (heap_unknown_release(ctx, fn, address, at_entry))
			return;
	} else {
		heap_released(ctx, fn, address, block.size_fn, block.stack_id, at_entry);
	}
	count_free(fn, address, size);
}

/* Whether an entry at stack pointer `sp` is nested in `call`, this thread's call in flight: a
 * nested call runs deeper in the stack than the outer one (or at the same depth: a tail call). */
static __always_inline bool nested_in(struct inflight_call *call, __u64 sp)
{
	return call && call->active && sp <= call->sp;
}

/* The entry of a target's call whose arguments are kept in `inflight` until its return. Only the
 * outermost of nested calls (realloc(NULL, n) reaching malloc, memalign reaching malloc,
 * reallocarray reaching realloc) is the user's allocation: the others count `depth` up, their
 * returns down. */
static __always_inline void call_begin(struct pt_regs *ctx, __u64 fn, __u64 size, __u64 old_ptr,
				      __u64 out_ptr)
{
	struct inflight_call *call;
	__u64 sp = PT_REGS_SP(ctx);

	call = thread_call(BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!call) {
		COUNT(inflight_failures, 1);
		return;
	}
	if (nested_in(call, sp)) {
		call->depth++;
		return;
	}
	/* Higher up than the call in flight: that call's return was never seen (a longjmp out of
	 * the allocator). Forget it rather than take every later call of the thread for nested. */
	if (call->active) {
		COUNT(inflight_failures, 1);
		__sync_fetch_and_add(&slow_calls, -1);
	}
	call->active = 1;
	call->fn = fn;
	call->tid = (__u32)bpf_get_current_pid_tgid();
	call->size = size;
	call->old_ptr = old_ptr;
	call->out_ptr = out_ptr;
	call->stack_id = -1;
	call->depth = 0;
	call->sp = sp;
	call->freed_at_entry = 0;
	call->old_state = OLD_NONE;
	__sync_fetch_and_add(&slow_calls, 1);
	if (!old_ptr || size == SIZE_OVERFLOW)
		return;
	call->freed_at_entry = old_ptr;
	/* realloc(p, 0) frees p (glibc: with free(p) inside; others may then return a new block,
	 * recorded at the return). Counted here so that free(p) finds it gone: a free does not look
	 * at the per-thread state unless its block is unknown. */
	if (size == 0) {
		record_free(ctx, fn, old_ptr, true);
		call->old_state = OLD_FREED;
		return;
	}
	/* A moving realloc frees p inside, and from then on the allocator may hand p to another
	 * thread, whose block would be the one removed if p left the table at the return. Until the
	 * return p belongs to this call: taken out now, counted or put back then. A resize of an
	 * address that is no block is a heap error at the entry, where the allocator may abort; the
	 * return must then not release it again. */
	if (table_take(process_key(old_ptr), &call->old_block) >= 0)
		call->old_state = OLD_TAKEN;
	else if (heap_unknown_release(ctx, fn, old_ptr, true))
		call->old_state = OLD_FREED;
	else
		call->old_state = OLD_UNKNOWN;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64[LEAK_OPERATOR_SITE_CODE / 8]);
	__uint(max_entries, 1);
} site_code_scratch SEC(".maps");

/* The operator's code with another tracer's or a debugger's breakpoints in it: an int3 in place of
 * the first byte of one of its instructions runs that instruction. */
static __always_inline bool same_but_breakpoints(const __u8 *code, const __u8 *want, __u64 starts)
{
	for (int b = 0; b < LEAK_OPERATOR_SITE_CODE; b++)
		if (code[b] != want[b] && (code[b] != 0xcc || !(starts >> b & 1)))
			return false;
	return true;
}

/* Whether the code around return address `ip` is operator_sites[i]'s: the bytes of the operator,
 * from its start through the `ret` after its call. Equal bytes make the same calls, so a return
 * from anywhere else never passes for the operator's. 1: it is, 0: it is not, -1: unreadable. */
static __always_inline int returns_into_site(__u64 ip, __u32 i)
{
	__u32 zero = 0, len, at;
	__u64 *code, *want;

	if (i >= LEAK_MAX_OPERATOR_SITES)
		return 0;
	len = operator_sites[i].len;
	at = operator_sites[i].return_at;
	code = bpf_map_lookup_elem(&site_code_scratch, &zero);
	if (!code || len == 0 || len > LEAK_OPERATOR_SITE_CODE || at > len)
		return 0;
	__builtin_memset(code, 0, LEAK_OPERATOR_SITE_CODE);
	if (bpf_probe_read_user(code, len, (void *)(ip - at)))
		return -1;
	want = (__u64 *)operator_sites[i].code;
	for (int w = 0; w < LEAK_OPERATOR_SITE_CODE / 8; w++)
		if (code[w] != want[w])
			return same_but_breakpoints((__u8 *)code, operator_sites[i].code,
						    operator_sites[i].insn_starts);
	return 1;
}

/* A return into a probeless operator new's call (LEAK_RETURN_INTO_SITE + i at its page offset):
 * when the code there is the operator's, the block is the operator's, or the new[]'s that
 * tail-called it (its entry-only probe left its kind and size at this stack pointer). Sets *fn,
 * *size and *operator_sp (the operator's entry stack pointer) and says so when it is. */
static __always_inline bool site_returned(__u64 ip, __u64 sp, __u32 i, __u64 address, bool zero_if_new,
					  __u64 *fn, __u64 *size, __u64 *operator_sp,
					  struct inflight_call *thread)
{
	struct inflight_call *t;
	int is_site;

	if (i >= LEAK_MAX_OPERATOR_SITES)
		return false;
	is_site = returns_into_site(ip, i);
	if (is_site < 0) {
		/* Recorded as malloc's, and the run says some calls could not be told. */
		COUNT(inflight_failures, 1);
		return false;
	}
	if (!is_site)
		return false;
	sp += operator_sites[i].sp_delta;
	t = thread ? thread : thread_call(address || *size != 1 ? 0 : BPF_LOCAL_STORAGE_GET_F_CREATE);
	/* Only a 1-byte request can be new(0); a retry's flags are the handler's. (A new that threw
	 * instead, then another of 1 byte from the same frame, takes the failed call's flag too.) */
	if (!address) {
		if (t && *size == 1) {
			t->retry_op_sp = sp;
			t->retry_zero = zero_if_new;
		}
		return true;
	}
	if (t && t->retry_op_sp == sp) {
		if (*size == 1)
			zero_if_new = t->retry_zero;
		t->retry_op_sp = 0;
	}
	*operator_sp = sp;
	if (t && t->op_fn && !t->op_return && t->op_sp == sp) {
		*fn = t->op_fn;
		*size = t->op_size;
		t->op_fn = 0;
		return true;
	}
	*fn = LEAK_FN_NEW;
	if (zero_if_new && operator_sites[i].zero_as_one)
		*size = 0;
	return true;
}

/* An allocation returned `address` (0: it failed) to `ip`, its stack pointer then `sp`: records
 * it, unless its thread is ignored or sampling skips it. `thread`: the thread's `inflight` state
 * when the caller has it, else NULL. `entry_sp`: 0 in a return probe, whose registers are the
 * caller's; else where the return address is, the stack then walked from there. */
static __always_inline void alloc_returned_to(struct pt_regs *ctx, __u64 ip, __u64 sp, __u64 entry_sp,
					      __u64 fn, __u64 address, __u64 size, __u32 tid,
					      struct inflight_call *thread)
{
	__u8 into = returns_into_operator[ip & (LEAK_PAGE_OFFSETS - 1)];
	__s64 stack_id;
	bool zero_if_new = size == SIZE_ONE_OR_NEW_ZERO;
	__u64 operator_sp = 0;

	if (zero_if_new)
		size = 1;
	if (into >= LEAK_RETURN_INTO_SITE && fn == LEAK_FN_MALLOC &&
	    site_returned(ip, sp, into - LEAK_RETURN_INTO_SITE, address, zero_if_new, &fn, &size,
			  &operator_sp, thread))
		into = 0;
	if (!address)
		return;
	if (into) {
		struct inflight_call *op = thread ? thread : thread_call(0);

		/* The call an entry-only operator new makes: the block is the operator's. */
		if (op && op->op_return == ip) {
			fn = op->op_fn;
			size = op->op_size;
			operator_sp = op->op_sp;
			op->op_return = 0;
			op->op_fn = 0;
		}
	}
	/* Checked at the return, not the entry: an ignored thread's realloc must still free the
	 * block it moved, and its nested calls must keep the depth count straight. */
	if (thread_ignored(tid)) {
		COUNT(ignored_allocs, 1);
		return;
	}
	if (sample_mean_bytes) {
		if (!thread)
			thread = thread_call(BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (thread && !sampled(thread, size)) {
			COUNT(allocs, 1);
			COUNT(bytes_allocated, size);
			return;
		}
	}
	/* From above the operator's frame, or the preloaded function's: one walk inlined here. */
	if (!operator_sp)
		operator_sp = entry_sp;
	stack_id = operator_sp ? caller_stack(ctx, operator_sp, tid) : alloc_stack(ctx, tid);
	record_alloc(fn, address, size, stack_id, tid);
}

/* The same, in a return probe. */
static __always_inline void alloc_returned(struct pt_regs *ctx, __u64 fn, __u64 address, __u64 size,
					   __u32 tid, struct inflight_call *thread)
{
	alloc_returned_to(ctx, PT_REGS_IP(ctx), PT_REGS_SP(ctx), 0, fn, address, size, tid, thread);
}

/* The return of a call that call_begin() saved. */
static __always_inline int call_return(struct pt_regs *ctx)
{
	struct inflight_call *st;
	__u64 address, fn, size, old_ptr, old_state, out_ptr;
	__u32 tid;

	/* No target check: only the target's entries leave a call in flight, and task storage is
	 * per thread (a fork's child starts without). */
	st = thread_call(0);
	if (!st || !st->active) /* the entry ran before we attached */
		return 0;
	if (st->depth) {
		st->depth--;
		return 0;
	}
	st->active = 0;
	__sync_fetch_and_add(&slow_calls, -1);
	fn = st->fn;
	size = st->size;
	old_ptr = st->old_ptr;
	old_state = st->old_state;
	out_ptr = st->out_ptr;
	tid = st->tid;

	address = PT_REGS_RC(ctx);
	if (size == SIZE_OVERFLOW) /* failed, changed nothing */
		return 0;
	switch (fn) {
	case LEAK_FN_POSIX_MEMALIGN:
		if (address != 0) /* an error number, nothing allocated */
			return 0;
		if (bpf_probe_read_user(&address, sizeof(address), (void *)out_ptr))
			return 0;
		break;
	case LEAK_FN_DELETE:
	case LEAK_FN_DELETE_ARRAY:
		return 0; /* released at the entry */
	case LEAK_FN_REALLOC:
	case LEAK_FN_REALLOCARRAY:
	case LEAK_FN_RALLOCX:
		/* A resize of a live block, moved or in place, is one free plus one alloc, as
		 * valgrind counts it. NULL is a failure that left p allocated, so nobody else can
		 * hold its address: its record goes back as it was. */
		if (old_state == OLD_TAKEN && !address) {
			struct leak_slot *o = &st->old_block;

			track_block(old_ptr, o->size_fn, o->timestamp_ns, o->stack_id,
				      (__u64)o->mark << 32 | o->tid);
		} else if (address && old_state == OLD_TAKEN) {
			heap_released(ctx, fn, old_ptr, st->old_block.size_fn, st->old_block.stack_id,
				      false);
			count_free(fn, old_ptr, (__s64)(st->old_block.size_fn & LEAK_SIZE_MASK));
		} else if (address && old_state == OLD_UNKNOWN) {
			count_free(fn, old_ptr, -1);
		}
		break;
	}
	alloc_returned(ctx, fn, address, size, tid, st);
	return 0;
}

/* A release inside a resize of the same block (mimalloc's realloc calls its exported free): the
 * resize's return releases the block, as one free plus one alloc. Looked up only while some call
 * of the slow kind is in flight, so a plain free() pays nothing. */
static __always_inline bool released_by_resize(struct pt_regs *ctx, __u64 address)
{
	struct inflight_call *call;

	if (!slow_calls)
		return false;
	call = thread_call(0);
	return call && call->old_ptr == address && nested_in(call, PT_REGS_SP(ctx)) &&
	       (call->fn == LEAK_FN_REALLOC || call->fn == LEAK_FN_REALLOCARRAY || call->fn == LEAK_FN_RALLOCX);
}

static __always_inline int free_enter(struct pt_regs *ctx, __u64 fn, __u64 ptr)
{
	if (!ptr || !is_target() || released_by_resize(ctx, ptr))
		return 0;
	record_free(ctx, fn, ptr, true);
	return 0;
}

/* malloc and calloc: the fast way when it is free (bpf/calls_in_flight.bpf.h), else as the others. */
static __always_inline void fast_enter(struct pt_regs *ctx, __u64 fn, __u64 size)
{
	if (!is_target() || size > LEAK_SIZE_MASK) /* a size that large fails */
		return;
#if defined(__TARGET_ARCH_x86)
	if (size == 1 && fn == LEAK_FN_MALLOC && (ctx->flags & X86_ZERO_FLAG))
		size = SIZE_ONE_OR_NEW_ZERO;
#endif
	/* Slots are keyed by stack pointer, which a fork's child shares with its parent. */
	if (!slow_calls && !follow_forks) {
		switch (call_slot_claim(PT_REGS_SP(ctx), size | fn << LEAK_SIZE_BITS, now_ns)) {
		case SLOT_STALE:
			COUNT(inflight_failures, 1);
			return;
		case SLOT_CLAIMED:
		case SLOT_NESTED:
			return;
		}
	}
	call_begin(ctx, fn, size, 0, 0);
}

/* The others: always through `inflight`. */
static __always_inline void call_enter(struct pt_regs *ctx, __u64 fn, __u64 size, __u64 old_ptr,
				      __u64 out_ptr)
{
	if (is_target())
		call_begin(ctx, fn, size, old_ptr, out_ptr);
}

/* An entry-only operator new: what it is and the size asked for wait in the thread's state for
 * the allocator call it makes, whose return records the block as the operator's. */
static __always_inline void operator_new_enter(struct pt_regs *ctx, __u64 fn, __u64 size, __s32 delta)
{
	struct inflight_call *t;
	__u64 sp = PT_REGS_SP(ctx);

	if (!is_target() || size > LEAK_SIZE_MASK)
		return;
	t = thread_call(BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t) {
		COUNT(inflight_failures, 1);
		return;
	}
	/* Inside a call with a return probe (operator new(nothrow) calling new): its return records
	 * the block. */
	if (nested_in(t, sp))
		return;
	/* Tail-called at the same stack pointer by the operator that set this (new[] jumping to new,
	 * as proved when it was made entry-only: nothing else leaves op_return 0): the block is that
	 * operator's; this one says where the allocation returns. No time limit: the thread may be
	 * preempted for long between the two probes. */
	if (t->op_fn && !t->op_return && t->op_sp == sp) {
		if (delta)
			t->op_return = PT_REGS_IP(ctx) + (__s64)delta;
		return;
	}
	t->op_fn = fn;
	t->op_size = size;
	t->op_sp = sp;
	t->op_return = delta ? PT_REGS_IP(ctx) + (__s64)delta : 0;
}

/* An entry-only operator delete: releases at its entry, and leaves the block's address for the
 * free() (or operator delete) it tail-calls (released_inside()). */
static __always_inline void operator_delete_enter(struct pt_regs *ctx, __u64 fn, __u64 ptr)
{
	struct inflight_call *t;

	if (!ptr || !is_target())
		return;
	t = thread_call(BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t) {
		COUNT(inflight_failures, 1);
		return;
	}
	/* Tail-called by an operator with a return probe, which released the block at its entry. */
	if (nested_in(t, PT_REGS_SP(ctx)))
		return;
	record_free(ctx, fn, ptr, true);
	t->deleted_ptr = ptr;
	t->deleted_sp = PT_REGS_SP(ctx);
}

/* operator new and delete (the size or the pointer first in every overload; the size the
 * program asked for is the block's, as valgrind counts it, whatever alignment new adds), and
 * jemalloc's own functions. The allocation new makes inside (malloc, aligned_alloc) is a nested
 * call; operator delete releases at its entry, as realloc(p, 0) does, so that the free() it
 * calls finds the block gone and knows why. */
static __always_inline void cxx_or_jemalloc_entry(struct pt_regs *ctx, __u64 fn, __u64 a0, __u64 a1)
{
	__u64 cookie;

	switch (fn) {
	case LEAK_FN_NEW ... LEAK_FN_NEW_ARRAY_ALIGNED_NOTHROW:
		cookie = bpf_get_attach_cookie(ctx);
		if (cookie & LEAK_COOKIE_ENTRY_ONLY)
			operator_new_enter(ctx, fn, a0, (__s32)(cookie >> LEAK_COOKIE_DELTA_SHIFT));
		else
			call_enter(ctx, fn, a0, 0, 0);
		break;
	case LEAK_FN_MALLOCX:
		call_enter(ctx, fn, a0, 0, 0);
		break;
	case LEAK_FN_DELETE:
	case LEAK_FN_DELETE_ARRAY:
		if (bpf_get_attach_cookie(ctx) & LEAK_COOKIE_ENTRY_ONLY)
			operator_delete_enter(ctx, fn, a0);
		else if (a0)
			call_enter(ctx, fn, 0, a0, 0);
		break;
	case LEAK_FN_RALLOCX:
		if (a1) /* rallocx(p, 0) is undefined: not a release */
			call_enter(ctx, fn, a1, a0, 0);
		break;
	}
}

/* The entry of `fn`, with the probed function's first three arguments. */
static __always_inline void entry_of(struct pt_regs *ctx, __u64 fn, __u64 a0, __u64 a1, __u64 a2)
{
	switch (fn) {
	case LEAK_FN_FREE:
	case LEAK_FN_SDALLOCX:
	case LEAK_FN_DALLOCX:
		free_enter(ctx, fn, a0);
		break;
	case LEAK_FN_MALLOC:
		fast_enter(ctx, fn, a0);
		break;
	case LEAK_FN_CALLOC:
		fast_enter(ctx, fn, array_bytes(a0, a1));
		break;
	case LEAK_FN_VALLOC:
		call_enter(ctx, fn, a0, 0, 0);
		break;
	case LEAK_FN_REALLOC:
		call_enter(ctx, fn, a1, a0, 0);
		break;
	case LEAK_FN_REALLOCARRAY:
		call_enter(ctx, fn, array_bytes(a1, a2), a0, 0);
		break;
	case LEAK_FN_POSIX_MEMALIGN:
		call_enter(ctx, fn, a2, 0, a0);
		break;
	case LEAK_FN_ALIGNED_ALLOC:
	case LEAK_FN_MEMALIGN:
		call_enter(ctx, fn, a1, 0, 0);
		break;
	case LEAK_FN_PVALLOC:
		/* pvalloc hands out whole pages: the block is the size rounded up. */
		call_enter(ctx, fn, a0 ? (a0 + page_size - 1) & ~(page_size - 1) : page_size, 0, 0);
		break;
	default:
		cxx_or_jemalloc_entry(ctx, fn, a0, a1);
		break;
	}
}

/* Every entry point goes through one program and every return through another, told apart by
 * address (or the attach cookie, enum leak_fn): that lets user space attach all of them with one
 * multi-uprobe link each, whose detach costs one RCU grace period instead of one per probe. */
SEC("uprobe")
int BPF_KPROBE(alloc_entry, __u64 a0, __u64 a1, __u64 a2)
{
	entry_of(ctx, probe_fn(ctx), a0, a1, a2);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(alloc_exit)
{
	__u64 size_fn;

	if (follow_forks)
		return call_return(ctx);
	size_fn = call_slot_take(PT_REGS_SP(ctx));
	if (size_fn == CALL_SLOT_NESTED)
		return 0;
	if (size_fn == CALL_SLOT_NONE)
		return call_return(ctx);
	alloc_returned(ctx, size_fn >> LEAK_SIZE_BITS, PT_REGS_RC(ctx), size_fn & LEAK_SIZE_MASK,
		       (__u32)bpf_get_current_pid_tgid(), NULL);
	return 0;
}

/* A preloaded malloc or calloc (native/preload/preload.c), at the nop after its call into glibc:
 * the request and the block at once, so the call needs no entry probe and no return probe. Its
 * frame holds the caller's return address 24 bytes up, %rbx and %r12 the request. Used only
 * without follow_forks (lib/tracer/options.ts): a fork's child runs no optimized probe. */
#define PRELOADED_FRAME 24

SEC("uprobe")
int BPF_KPROBE(alloc_preloaded)
{
#if defined(__TARGET_ARCH_x86)
	__u64 fn = bpf_get_attach_cookie(ctx) & LEAK_COOKIE_FN_MASK;
	__u64 entry_sp = PT_REGS_SP(ctx) + PRELOADED_FRAME, ra, size;
	struct inflight_call *call;

	if (!is_target())
		return 0;
	if (fn == LEAK_FN_CALLOC) {
		size = array_bytes(ctx->bx, ctx->r12);
	} else {
		size = ctx->bx;
		if (size == 1 && (ctx->r12 & 0xff))
			size = SIZE_ONE_OR_NEW_ZERO;
	}
	if (size != SIZE_ONE_OR_NEW_ZERO && size > LEAK_SIZE_MASK) /* failed */
		return 0;
	/* Inside another probed call (operator new(nothrow) calling new): that call's return
	 * records the block. */
	if (slow_calls) {
		call = thread_call(0);
		if (nested_in(call, entry_sp))
			return 0;
	}
	if (bpf_probe_read_user(&ra, sizeof(ra), (void *)entry_sp)) {
		COUNT(inflight_failures, 1);
		return 0;
	}
	alloc_returned_to(ctx, ra, entry_sp + 8, entry_sp, fn, PT_REGS_RC(ctx), size,
			  (__u32)bpf_get_current_pid_tgid(), NULL);
#endif
	return 0;
}

/* The wait status of a target we did not start (no waitid() for it), recorded as its last
 * thread exits; read by user space when its pidfd says it has exited. */
__u32 exit_status = 0;
bool exit_status_seen = false;

#define LEAK_SIGNAL_GROUP_EXIT 0x00000004 /* include/linux/sched/signal.h */

/* Supervised processes: a thread in the dynamic loader's `_dl_debug_state()`, which it calls
 * once it mapped the objects of a dlopen() and before it runs their code, is stopped by a signal
 * its ptrace supervisor takes (native/process/supervisor.cc) to load their unwind tables first:
 * the first stacks through a new library are then whole. */
const volatile bool stop_at_loads = false;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);  /* thread id */
	__type(value, __u8);
} load_stops SEC(".maps");

SEC("uprobe")
int BPF_KPROBE(loader_changed)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u8 one = 1;

	if (!stop_at_loads || (follow_forks && !process_traced()))
		return 0;
	/* One signal at a time a thread: the entry says the next one is ours. */
	if (bpf_map_update_elem(&load_stops, &tid, &one, BPF_NOEXIST) == 0)
		bpf_send_signal_thread(LEAK_LOAD_SIGNAL);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(target_exit, struct task_struct *p)
{
	struct signal_struct *sig;

	if (BPF_CORE_READ(p, tgid) != target_tgid)
		return 0;
	sig = BPF_CORE_READ(p, signal);
	if (BPF_CORE_READ(sig, live.counter) != 0)
		return 0;
	exit_status = BPF_CORE_READ(sig, flags) & LEAK_SIGNAL_GROUP_EXIT ? BPF_CORE_READ(sig, group_exit_code)
									   : BPF_CORE_READ(p, exit_code);
	exit_status_seen = true;
	return 0;
}

static long drop_stack_total(struct bpf_map *map, __s64 *stack_id, void *value, void *data)
{
	bpf_map_delete_elem(map, stack_id);
	return 0;
}

/* image_keys: the process has exec'd. It is one thread here, in the kernel, and the only one
 * traced: nothing else writes what is reset below. */
static __always_inline void next_image(void)
{
	__u64 n = images + 1;
	__u32 slot = n % LEAK_IMAGE_COMMANDS;
	struct mm_struct *mm = bpf_get_current_task_btf()->mm;
	__u64 start = BPF_CORE_READ(mm, arg_start), bytes = BPF_CORE_READ(mm, arg_end) - start;

	if (bytes > LEAK_IMAGE_COMMAND_BYTES - 1)
		bytes = LEAK_IMAGE_COMMAND_BYTES - 1;
	/* Just copied there by the exec: resident. */
	if (bytes == 0 || bpf_probe_read_user(image_commands[slot], bytes, (void *)start))
		bytes = 0;
	image_command_bytes[slot] = bytes;
	image_bits = (n % LEAK_MAX_PROCESSES) << LEAK_PROCESS_SHIFT;
	/* Threads the exec ended inside an allocator call left it counted as in flight. */
	slow_calls = 0;
	if (keep_stack_totals)
		bpf_for_each_map_elem(&stack_totals, drop_stack_total, NULL, 0);
	__sync_fetch_and_add(&images, 1); /* a full barrier: the index is published first */
}

/* `command` targets: the process is ours from fork to exec; only the exec'd program counts.
 * Attached ones (image_keys): each exec starts a new image. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(target_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	if (BPF_CORE_READ(p, tgid) != target_tgid)
		return 0;
	if (image_keys) {
		next_image();
		return 0;
	}
	COUNT(execs, 1);
	armed = true;
	return 0;
}
