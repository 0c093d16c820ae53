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

/* What a released block was, kept until its address is released again or the queue drops it. */
struct freed_block {
	__u64 size_fn; /* as in leak_slot */
	__s64 alloc_stack;
	__u64 free_fn; /* as in leak_heap_error */
	__s64 free_stack;
};

/* Recently released blocks, oldest dropped first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct freed_block);
	__uint(max_entries, 65536); /* resized before load; 1 when not in run mode */
} freed_blocks SEC(".maps");

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
	if (unwind_stack_from(ra, sp + 8, PT_REGS_FP(ctx), tid, &id))
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
				       const struct freed_block *first)
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
	if (capture_stacks || mismatched)
		stack = release_stack(ctx, tid, at_entry);
	if (mismatched)
		heap_error(LEAK_ERROR_MISMATCHED_FREE, release_fn_at(ctx, fn, at_entry), address, stack,
			   size_fn, alloc_stack_id, NULL);
	if (report_heap_errors) {
		struct freed_block b = {
			.size_fn = size_fn,
			.alloc_stack = alloc_stack_id,
			.free_fn = release_fn_at(ctx, fn, at_entry),
			.free_stack = stack,
		};

		__u64 key = process_key(address); /* a fork's child shares its parent's addresses */

		bpf_map_update_elem(&freed_blocks, &key, &b, BPF_ANY);
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
	struct freed_block *first, copy;
	__s64 stack;
	__u64 key;

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
	key = process_key(address);
	first = bpf_map_lookup_elem(&freed_blocks, &key);
	if (first) {
		copy = *first;
		heap_error(LEAK_ERROR_DOUBLE_FREE, release_fn_at(ctx, fn, at_entry), address, stack,
			   copy.size_fn, copy.alloc_stack, &copy);
	} else {
		heap_error(LEAK_ERROR_INVALID_FREE, release_fn_at(ctx, fn, at_entry), address, stack, 0,
			   -1, NULL);
	}
	/* valgrind counts the call among the frees of its HEAP SUMMARY. */
	COUNT(frees, 1);
	return true;
}

#endif /* EBPF_LEAK_HEAP_ERRORS_H */
