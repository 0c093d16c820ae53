/* Shared between bpf/leak.bpf.c and native/: plain fixed-width structs only, so both sides agree on
 * the layout without BTF. lib/native-layout.ts decodes the same layouts; keep the three in step. */
#ifndef EBPF_LEAK_H
#define EBPF_LEAK_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Which allocator function an allocation or free came from. The numbering is part of the event
 * and snapshot ABI with lib/. */
enum leak_fn {
	LEAK_FN_MALLOC = 0,
	LEAK_FN_CALLOC = 1,
	LEAK_FN_REALLOC = 2,
	LEAK_FN_REALLOCARRAY = 3,
	LEAK_FN_FREE = 4,
	LEAK_FN_POSIX_MEMALIGN = 5,
	LEAK_FN_ALIGNED_ALLOC = 6,
	LEAK_FN_MEMALIGN = 7,
	LEAK_FN_VALLOC = 8,
	LEAK_FN_PVALLOC = 9,
	/* C++'s operator new, one value per overload, so that a block's stack starts at the one
	 * that allocated it; the nothrow and aligned ones have the size first too. */
	LEAK_FN_NEW = 10,			/* operator new(size_t) */
	LEAK_FN_NEW_NOTHROW = 11,		/* operator new(size_t, nothrow_t const&) */
	LEAK_FN_NEW_ALIGNED = 12,		/* operator new(size_t, align_val_t) */
	LEAK_FN_NEW_ALIGNED_NOTHROW = 13,	/* operator new(size_t, align_val_t, nothrow_t const&) */
	LEAK_FN_NEW_ARRAY = 14,			/* operator new[], as above */
	LEAK_FN_NEW_ARRAY_NOTHROW = 15,
	LEAK_FN_NEW_ARRAY_ALIGNED = 16,
	LEAK_FN_NEW_ARRAY_ALIGNED_NOTHROW = 17,
	/* operator delete and delete[], every overload: the pointer is the first argument of all. */
	LEAK_FN_DELETE = 18,
	LEAK_FN_DELETE_ARRAY = 19,
	/* jemalloc's own entry points. */
	LEAK_FN_MALLOCX = 20,	/* mallocx(size, flags) */
	LEAK_FN_RALLOCX = 21,	/* rallocx(ptr, size, flags) */
	LEAK_FN_SDALLOCX = 22,	/* sdallocx(ptr, size, flags) */
	LEAK_FN_DALLOCX = 23,	/* dallocx(ptr, flags) */
	LEAK_FN_COUNT = 24,
};

/* Which allocation a release function pairs with: a block allocated by a function of one family
 * and released by a function of another is a mismatched free. */
enum leak_family {
	LEAK_FAMILY_MALLOC = 0,	   /* malloc & co., released by free, realloc, jemalloc's *dallocx */
	LEAK_FAMILY_NEW = 1,	   /* operator new, released by operator delete */
	LEAK_FAMILY_NEW_ARRAY = 2, /* operator new[], released by operator delete[] */
};

/* A heap error: a release the allocator must not be given. */
enum leak_error_kind {
	LEAK_ERROR_INVALID_FREE = 1,	/* an address never handed out, or inside a block */
	LEAK_ERROR_DOUBLE_FREE = 2,	/* a block already released (still in `freed_blocks`) */
	LEAK_ERROR_MISMATCHED_FREE = 3, /* released by a function of another family */
};

/* One heap error, as recorded in `heap_errors`: the slots of that array, in order, up to
 * `heap_error_count`. Stacks are ids as in leak_slot (-1: none); the release stack starts at the
 * caller of the releasing function (user space puts that function on top). */
struct leak_heap_error {
	__u32 kind;		/* enum leak_error_kind */
	__u32 tid;
	__u64 address;
	__u64 release_fn;	/* enum leak_fn of the release; at an entry, high half: the entry
				 * probe's offset in its page + 1 (which overload), else 0 */
	__s64 release_stack;
	__u64 alloc_size_fn;	/* the block's size | fn << LEAK_SIZE_BITS; 0: not known */
	__s64 alloc_stack;
	__u64 first_free_fn;	/* double free: the release that freed it first (as release_fn) */
	__s64 first_free_stack;
	__u32 pid;		/* the process (tgid): following forks, whose report it goes to */
	__u32 unused;
};
#define LEAK_MAX_HEAP_ERRORS 4096

/* A set of `freed_blocks` (bpf/heap_errors.bpf.h), the recently released blocks of run mode: keys
 * are process_key(address) as in `allocs`, 0 when the way is empty, LEAK_SLOT_BUSY while a release
 * writes it. `begun` and `ended` count the writes started and finished in the set: a reader that
 * sees them equal before its copy, and `begun` unchanged after it, copied no write half done. */
#define LEAK_FREED_WAYS 8
struct leak_freed_block {
	__u64 size_fn;	 /* as in leak_slot */
	__s64 alloc_stack;
	__u64 free_fn;	 /* as in leak_heap_error */
	__s64 free_stack;
};
struct leak_freed_set {
	__u64 keys[LEAK_FREED_WAYS];
	__u64 begun;
	__u64 ended;
	struct leak_freed_block blocks[LEAK_FREED_WAYS];
};

/* How the probes are attached: the `attach_mode` knob of bpf/leak.bpf.c. */
enum leak_attach_mode {
	LEAK_ATTACH_UPROBE = 0,	 /* one classic uprobe (and uretprobe) per function */
	LEAK_ATTACH_MULTI = 1,	 /* multi-uprobe links: entries in one, returns in another */
};

/* Entry probes are told apart by their offset within a page (the `fn_at_page_offset` knob). */
/* The signal a supervised thread gets where the dynamic loader changed its list of objects
 * (`_dl_debug_state()`): its ptrace supervisor loads the new objects' unwind tables, then lets it
 * go on without the signal. SIGURG: ignored by default, should one ever reach a program. */
#define LEAK_LOAD_SIGNAL 23

#define LEAK_PAGE_OFFSETS 4096

/* A probe's attach cookie: its enum leak_fn in the low byte; LEAK_COOKIE_ENTRY_ONLY for an operator
 * new or delete that has no return probe (user space proved, by decoding it, that it is a wrapper:
 * delete tail-calls free or another delete, new's block is what its call to malloc returns); for
 * such a new, the signed distance from its entry probe to where that call returns, in the high
 * half (0: it tail-calls another operator new). */
#define LEAK_COOKIE_FN_MASK 0xffULL
#define LEAK_COOKIE_ENTRY_ONLY (1ULL << 8)
#define LEAK_COOKIE_DELTA_SHIFT 32

/* An operator new with no probe at all (lib/probes/operators.ts, proveCallSite): malloc's return
 * knows the operator's call by the code around its return address, which must equal `code` (the
 * operator's bytes from its start through the `ret` after the call, zero-padded). Up to
 * LEAK_MAX_OPERATOR_SITES, each at its own offset within a page (`returns_into_operator`). */
#define LEAK_MAX_OPERATOR_SITES 4
#define LEAK_OPERATOR_SITE_CODE 64
struct leak_operator_site {
	__u8 code[LEAK_OPERATOR_SITE_CODE];
	__u32 len;	   /* bytes of `code` that are the operator's */
	__u32 return_at;   /* offset in `code` where the call to malloc returns */
	__u32 sp_delta;	   /* the operator's entry stack pointer is the return's plus this */
	__u32 zero_as_one; /* new(0) asks malloc for 1 byte with the zero flag set at the call */
	__u64 insn_starts; /* bit i: an instruction of `code` begins at byte i */
};
/* `returns_into_operator` at a return site's offset within a page: */
#define LEAK_RETURN_INTO_ENTRY_ONLY 1 /* an entry-only operator new's call: its thread state says */
#define LEAK_RETURN_INTO_SITE 2	      /* 2 + i: leak_operator_site i */

/* A slot of the `allocs` table (bpf/alloc_table.bpf.h): one outstanding block. */
struct leak_slot {
	__u64 size_fn;	    /* size | fn << LEAK_SIZE_BITS: no block reaches 2^56 bytes */
	__u64 timestamp_ns; /* `now_ns` when the allocation returned (bpf/leak.bpf.c) */
	__s64 stack_id;	    /* id in `stack_traces`, or -1 (stacks off, or the walk failed) */
	__u32 tid;
	__u32 mark;	    /* low 32 bits of the `mark` global when allocated (tracer.mark()) */
};
#define LEAK_SIZE_BITS 56
#define LEAK_SIZE_MASK ((1ULL << LEAK_SIZE_BITS) - 1)

/* Buckets of the table per flag of `touched_groups`: 20 KiB of buckets, five pages. */
#define LEAK_TABLE_GROUP_BUCKETS 64

/* A bucket of the table: its keys (block addresses) fill one cache line. A key is 0 when the slot
 * is empty, LEAK_SLOT_BUSY while an allocation is writing its value. */
#define LEAK_BUCKET_SLOTS 8
#define LEAK_SLOT_BUSY 1ULL
struct leak_bucket {
	__u64 keys[LEAK_BUCKET_SLOTS];
	struct leak_slot values[LEAK_BUCKET_SLOTS];
};

/* One outstanding block as handed to JS: the buffers of the addon's snapshot() are these records
 * back to back (or leak_timed_block's, when asked for timestamps). The slot's own packing, 32
 * bytes: a million blocks are 30 MB, where unpacked (56 bytes) every snapshot or report held was
 * 53 MB. Reports show no block's age, so only Snapshot.allocations pays for a timestamp. */
struct leak_block {
	__u64 address;
	__u64 size_fn;	    /* size | fn << LEAK_SIZE_BITS, as in leak_slot */
	__s64 stack_id;	    /* id in `stack_traces`, or -1 (stacks off, or the walk failed) */
	__u32 tid;
	__u32 mark;	    /* low 32 bits of the `mark` global when allocated (tracer.mark()) */
};

/* A block with the time it was allocated: the records of snapshot() when asked for timestamps. */
struct leak_timed_block {
	struct leak_block block;
	__u64 timestamp_ns; /* when the allocation returned, to the poll thread's tick (10 ms) */
};

/* Counters, one copy per CPU in the `counters` map, summed by user space. */
struct leak_counters {
	__u64 allocs;		/* successful allocations */
	__u64 frees;		/* frees of tracked blocks */
	__u64 bytes_allocated;	/* requested bytes of all allocations */
	__u64 bytes_freed;	/* bytes of tracked blocks freed */
	__u64 unknown_frees;	/* frees of addresses not in `allocs` */
	__u64 dropped_allocs;	/* allocations not tracked: both their buckets in `allocs` were full */
	__u64 lost_events;	/* events not delivered: ring buffer full */
	__u64 stack_failures;	/* allocations whose stack could not be recorded */
	__u64 inflight_failures; /* entries whose per-thread state could not be saved, whose
				  * return was never seen (a longjmp out of the allocator), or
				  * allocations whose caller's code could not be read to tell an
				  * operator new's call */
	__u64 execs;		/* exec()s of the target seen */
	__u64 ignored_allocs;	/* allocations by threads in `ignored_tids` (the tracer's own) */
};

/* An executable file mapping of the target, recorded in the kernel the first time a stack passes
 * through it, so stacks can be symbolized after the process exited or unmapped the file
 * (dlclose). The path is rebuilt from dentry names: parts[0] is the file name, parts[1] its
 * directory, and so on up to the root of its filesystem; user space adds the mount point. */
#define LEAK_PATH_PARTS 12
#define LEAK_PATH_PART_LEN 64
#define LEAK_MAX_STACK_DEPTH 127

/* Stack ids with this bit are keys of `overflow_stacks` (a hash of the frames), not indexes of
 * `stack_traces`. Below 2^53, so JavaScript numbers hold every id exactly. */
#define LEAK_OVERFLOW_STACK_TAG (1ULL << 52)

struct leak_module {
	__u64 start;
	__u64 end;
	__u64 file_offset; /* offset in the file of `start` */
	__u64 inode;
	__u64 dev;	   /* kernel dev_t of the file's filesystem: major << 20 | minor */
	char parts[LEAK_PATH_PARTS][LEAK_PATH_PART_LEN];
};

/* Most threads `ignored_tids` holds: the tracer's poll thread plus the worker threads that are
 * inside one of its native calls at the same time. */
#define LEAK_MAX_IGNORED_THREADS 1024

/* Processes traced at once with follow_forks (bpf/traced_processes.bpf.h): a block's key in `allocs`
 * is its address | the process's index << LEAK_PROCESS_SHIFT. Index 0 is never given out. */
#define LEAK_PROCESS_SHIFT 48
#define LEAK_MAX_PROCESSES 4096
/* An attached process's exec (image_keys): the new image's command line as the exec left it on
 * its stack (NUL-separated, cut at LEAK_IMAGE_COMMAND_BYTES - 1), for the last few execs, by
 * image index % LEAK_IMAGE_COMMANDS. User space reads it when the process is gone already. */
#define LEAK_IMAGE_COMMAND_BYTES 512
#define LEAK_IMAGE_COMMANDS 8
#define LEAK_ADDRESS_MASK ((1ULL << LEAK_PROCESS_SHIFT) - 1)

/* Per-event record of the optional ring buffer stream. */
struct leak_event {
	__u64 kind;	/* LEAK_EVENT_ALLOC or LEAK_EVENT_FREE */
	__u64 fn;	/* enum leak_fn */
	__u64 address;
	__u64 size;
	__u64 timestamp_ns;
	__u64 tid;	/* following forks: | the process's tgid << 32 */
	__s64 stack_id;
};

enum leak_event_kind {
	LEAK_EVENT_ALLOC = 1,
	LEAK_EVENT_FREE = 2,
};

#endif /* EBPF_LEAK_H */
