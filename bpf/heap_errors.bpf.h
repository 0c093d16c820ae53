/* Heap errors: releases the allocator must not be given, recorded with their stacks.
 *
 * - A block released by a function of another family than the one that allocated it (free() of
 *   operator new[]'s block, delete of malloc's, delete of new[]'s): a mismatched free. Known in
 *   any mode, since both ends were seen.
 * - In `run` mode (`report_heap_errors`: every allocation since exec went through the probes), a
 *   release of an address that is not an outstanding block: a double free when the address is
 *   among the recently released blocks (`freed_blocks`, bounded as valgrind's --freelist-vol
 *   bounds its queue), otherwise an invalid free (never handed out, or inside a block). In
 *   `attach` mode such a release is a block allocated before tracing started, not an error. Once
 *   the table has dropped a block, such a release may be that block's: counted, not an error.
 *
 * Not errors: the allocator releasing memory of its own (glibc's tcache returns its blocks and
 * itself at thread exit, through free(), from inside libc). Those calls come from the allocator's
 * file, `allocator_inode`.
 *
 * Errors are rare: each takes a stack walk and a slot of `heap_errors`, which user space reads
 * once, for the report. */
#ifndef EBPF_LEAK_HEAP_ERRORS_H
#define EBPF_LEAK_HEAP_ERRORS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "abi/leak.h"
#include "alloc_table.bpf.h" /* blocks_dropped */
#include "counters.bpf.h"
#include "stacks.bpf.h"
#include "traced_processes.bpf.h"
#include "unwind.bpf.h"

/* Set by user space before load. */
const volatile bool report_heap_errors = false;
const volatile __u64 allocator_inode = 0; /* the allocator's file: its own frees are not errors */
/* Whether a release walks its stack to keep it for a later double free's report (valgrind's
 * --keep-stacktraces=alloc-and-free). Off (`alloc`), the walk is taken only for an error's own
 * call: about half of what stacks cost on a malloc-heavy program. */
const volatile bool keep_release_stacks = true;

/* Recently released blocks: an address's set of LEAK_FREED_WAYS ways, replaced in turn (the
 * oldest write of the set first), so a block stays until its set has seen that many releases
 * after it; a release of an address the set holds rewrites its way.
 *
 * Not a BPF hash map: an LRU hash map's update (bpf_lru_pop_free, htab_lru_map_update_elem) cost
 * about 0.8 us per free, more than the rest of the free's entry program (1,251 ns against 449 ns
 * with this table, docs/performance.md). Array lookups are inlined by the verifier, and a release
 * writes its way with three atomic instructions and no helper call.
 *
 * Two CPUs may write one set at once: `begun` hands out the ways (the writer's ticket) and with
 * `ended` tells a reader a write was under way; a way is claimed by exchanging its key for
 * LEAK_SLOT_BUSY, so two writers given one way (more than LEAK_FREED_WAYS writes in flight in a
 * set) never mix their values, the second one giving up. A block lost that way, or a set being
 * written while a double free reads it, makes that double free an invalid free in the report, as
 * for a block released too long ago: never a wrong first free. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); /* user space forgets an ended process's blocks in place */
	__type(key, __u32);
	__type(value, struct leak_freed_set);
	__uint(max_entries, 1); /* freed_sets, set before load */
} freed_blocks SEC(".maps");

/* = freed_blocks' max_entries: the capacity (freedBlocks) / LEAK_FREED_WAYS, rounded up. */
const volatile __u32 freed_sets = 1;

static __always_inline struct leak_freed_set *freed_set_of(__u64 key)
{
	__u64 h = (key ^ (key >> 29)) * 0x9e3779b97f4a7c15ULL;
	__u32 i = (__u32)(((h >> 32) * (__u64)freed_sets) >> 32);

	return bpf_map_lookup_elem(&freed_blocks, &i);
}

/* Remembers the released block `key` (process_key of its address). */
static __always_inline void freed_block_put(__u64 key, const struct leak_freed_block *b)
{
	struct leak_freed_set *s = freed_set_of(key);
	__u64 step = 1, ticket;
	int way = -1;

	if (!s)
		return;
#pragma unroll
	for (int i = 0; i < LEAK_FREED_WAYS; i++)
		if (s->keys[i] == key)
			way = i;
	/* A rewrite in place advances the ticket by a whole turn: the next new block still takes
	 * the oldest way. */
	if (way >= 0)
		step = LEAK_FREED_WAYS;
	ticket = __sync_fetch_and_add(&s->begun, step);
	if (way < 0)
		way = ticket;
	way &= LEAK_FREED_WAYS - 1;
	if (__sync_lock_test_and_set(&s->keys[way], LEAK_SLOT_BUSY) != LEAK_SLOT_BUSY) {
		s->blocks[way] = *b;
		key_publish(&s->keys[way], key);
	}
	__sync_fetch_and_add(&s->ended, step);
}

/* Copies the released block `key` to `out`. False when the set does not hold it, or was being
 * written during the copy. The reads of `begun` and `ended` are atomic adds of 0 for their full
 * barriers: this runs once per double or invalid free. */
static __always_inline bool freed_block_get(__u64 key, struct leak_freed_block *out)
{
	struct leak_freed_set *s = freed_set_of(key);
	__u64 begun;
	int way = -1;

	if (!s)
		return false;
	begun = __sync_fetch_and_add(&s->begun, 0);
	if (__sync_fetch_and_add(&s->ended, 0) != begun)
		return false;
#pragma unroll
	for (int i = 0; i < LEAK_FREED_WAYS; i++)
		if (s->keys[i] == key)
			way = i;
	if (way < 0)
		return false;
	*out = s->blocks[way & (LEAK_FREED_WAYS - 1)];
	return __sync_fetch_and_add(&s->begun, 0) == begun;
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct leak_heap_error);
	__uint(max_entries, LEAK_MAX_HEAP_ERRORS);
} heap_errors SEC(".maps");

/* Errors seen; those past LEAK_MAX_HEAP_ERRORS have no slot (user space reports them lost). */
__u64 heap_error_count = 0;

static __always_inline __u32 alloc_family(__u64 fn)
{
	if (fn >= LEAK_FN_NEW && fn <= LEAK_FN_NEW_ALIGNED_NOTHROW)
		return LEAK_FAMILY_NEW;
	if (fn >= LEAK_FN_NEW_ARRAY && fn <= LEAK_FN_NEW_ARRAY_ALIGNED_NOTHROW)
		return LEAK_FAMILY_NEW_ARRAY;
	return LEAK_FAMILY_MALLOC;
}

static __always_inline __u32 release_family(__u64 fn)
{
	if (fn == LEAK_FN_DELETE)
		return LEAK_FAMILY_NEW;
	if (fn == LEAK_FN_DELETE_ARRAY)
		return LEAK_FAMILY_NEW_ARRAY;
	return LEAK_FAMILY_MALLOC;
}

/* The caller's return address at a function's entry: on top of the stack on x86-64, in the link
 * register (x30) on arm64. Non-zero when it cannot be read. */
static __always_inline long entry_return_address(struct pt_regs *ctx, __u64 *ra)
{
#if defined(__TARGET_ARCH_x86)
	return bpf_probe_read_user(ra, sizeof(*ra), (void *)PT_REGS_SP(ctx));
#else
	*ra = PT_REGS_RET(ctx);
	return 0;
#endif
}

/* The stack of a release. At a function's entry the walk starts from the caller's return address
 * as from a return probe; elsewhere (realloc's return) from the registers. With frame pointers
 * only, the kernel's walk at an entry misses the caller. */
static __always_inline __s64 release_stack(struct pt_regs *ctx, __u32 tid, bool at_entry)
{
	__u64 ra, sp = PT_REGS_SP(ctx);
	__s64 id;

	if (!at_entry)
		return alloc_stack(ctx, tid);
	if (entry_return_address(ctx, &ra))
		return -1;
	if (unwind_stack_from(ra, sp + 8, PT_REGS_FP(ctx), tid, PT_REGS_IP(ctx), &id))
		return id;
	id = bpf_get_stackid(ctx, &stack_traces, BPF_F_USER_STACK | 1 /* the function itself */);
	if (id >= 0)
		record_stack_mappings(ctx, id);
	return id < 0 ? -1 : id;
}

/* `fn` as a heap error records a release: at a function's entry, the entry probe's offset in its
 * page (plus one) in the high half, which tells the overloads of one function apart (operator
 * delete(void*) from operator delete(void*, unsigned long)), as user space knows their probes. */
static __always_inline __u64 release_fn_at(struct pt_regs *ctx, __u64 fn, bool at_entry)
{
	if (!at_entry)
		return fn;
	return fn | ((PT_REGS_IP(ctx) & (LEAK_PAGE_OFFSETS - 1)) + 1) << 32;
}

static __always_inline void heap_error(__u32 kind, __u64 fn, __u64 address, __s64 stack,
				       __u64 alloc_size_fn, __s64 alloc_stack_id,
				       const struct leak_freed_block *first)
{
	__u64 i = __sync_fetch_and_add(&heap_error_count, 1);
	__u32 key = i;
	struct leak_heap_error *e;

	if (i >= LEAK_MAX_HEAP_ERRORS)
		return;
	e = bpf_map_lookup_elem(&heap_errors, &key);
	if (!e)
		return;
	e->kind = kind;
	e->tid = (__u32)bpf_get_current_pid_tgid();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->address = address;
	e->release_fn = fn;
	e->release_stack = stack;
	e->alloc_size_fn = alloc_size_fn;
	e->alloc_stack = alloc_stack_id;
	e->first_free_fn = first ? first->free_fn : 0;
	e->first_free_stack = first ? first->free_stack : -1;
}

/* A release of an outstanding block: a mismatch is an error; in run mode the block joins the
 * queue of recently released ones. */
static __always_inline void heap_released(struct pt_regs *ctx, __u64 fn, __u64 address,
					  __u64 size_fn, __s64 alloc_stack_id, bool at_entry)
{
	bool mismatched = alloc_family(size_fn >> LEAK_SIZE_BITS) != release_family(fn);
	__u32 tid;
	__s64 stack = -1;

	if (!mismatched && !report_heap_errors)
		return;
	tid = (__u32)bpf_get_current_pid_tgid();
	if ((capture_stacks && keep_release_stacks) || mismatched)
		stack = release_stack(ctx, tid, at_entry);
	if (mismatched)
		heap_error(LEAK_ERROR_MISMATCHED_FREE, release_fn_at(ctx, fn, at_entry), address, stack,
			   size_fn, alloc_stack_id, NULL);
	if (report_heap_errors) {
		struct leak_freed_block b = {
			.size_fn = size_fn,
			.alloc_stack = alloc_stack_id,
			.free_fn = release_fn_at(ctx, fn, at_entry),
			.free_stack = stack,
		};

		/* A fork's child shares its parent's addresses: keyed by process as in `allocs`. */
		freed_block_put(process_key(address), &b);
	}
}

static long vma_is_allocator(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	struct file *file = vma->vm_file;

	*(bool *)data = file && BPF_CORE_READ(file, f_inode, i_ino) == allocator_inode;
	return 0;
}

/* Whether the function entered at `ctx` was called from the allocator's own file. When the
 * mapping cannot be looked up because another thread holds the mmap lock (threads ending at once
 * unmap their stacks while glibc frees their caches), the call is taken as the allocator's: those
 * thread-exit releases are frequent, an invalid free landing on that moment is not. */
static __always_inline bool called_by_allocator(struct pt_regs *ctx)
{
	__u64 ra;
	bool inside = false;

	if (!allocator_inode || entry_return_address(ctx, &ra))
		return false;
	if (bpf_find_vma(bpf_get_current_task_btf(), ra, vma_is_allocator, &inside, 0) == -EBUSY)
		return true;
	return inside;
}

/* A release of an address that is not an outstanding block, in run mode: a double free or an
 * invalid free. Returns whether it was an error (not the allocator's own bookkeeping). */
static __always_inline bool heap_unknown_release(struct pt_regs *ctx, __u64 fn, __u64 address,
						 bool at_entry)
{
	struct leak_freed_block first;
	__s64 stack;

	if (!report_heap_errors || (at_entry && called_by_allocator(ctx)))
		return false;
	if (blocks_dropped) {
		/* The table had no room for some block, and this address may be one of them (an
		 * earlier life of it in `freed_blocks` proves nothing then): a dropped block's free or
		 * an invalid one, which cannot be told apart. valgrind counts both among the frees, so
		 * the total stays exact; no error is claimed, and the drops make the run inconclusive. */
		COUNT(frees, 1);
		return true;
	}
	stack = release_stack(ctx, (__u32)bpf_get_current_pid_tgid(), at_entry);
	if (freed_block_get(process_key(address), &first)) {
		heap_error(LEAK_ERROR_DOUBLE_FREE, release_fn_at(ctx, fn, at_entry), address, stack,
			   first.size_fn, first.alloc_stack, &first);
	} else {
		heap_error(LEAK_ERROR_INVALID_FREE, release_fn_at(ctx, fn, at_entry), address, stack, 0,
			   -1, NULL);
	}
	/* valgrind counts the call among the frees of its HEAP SUMMARY. */
	COUNT(frees, 1);
	return true;
}

#endif /* EBPF_LEAK_HEAP_ERRORS_H */
