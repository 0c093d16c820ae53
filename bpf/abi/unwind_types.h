/* Records shared by the BPF unwinder (bpf/unwind.bpf.h) and its user-space side
 * (native/unwind/unwind_table.cc): plain fixed-width structs, like bpf/abi/leak.h.
 *
 * The unwinder walks a user stack with compact tables built from each module's .eh_frame
 * (DWARF CFI): for every code range of a module, how to find the caller's frame from this one.
 * On x86-64 the return address always sits at CFA - 8, so a row only says how the CFA (the
 * stack pointer before the call that made this frame) is computed and where the caller's rbp
 * was saved. Rows are keyed by file offset (not ELF address), so the kernel side needs no ELF
 * segment arithmetic: file offset = pc - vma start + vma pgoff * page size. */
#ifndef EBPF_LEAK_UNWIND_TYPES_H
#define EBPF_LEAK_UNWIND_TYPES_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* unwind_mode (rodata); the BPF side only tells fp from the others. */
enum leak_unwind_mode {
	LEAK_UNWIND_FP = 0,    /* bpf_get_stackid(): the kernel's frame-pointer walk */
	LEAK_UNWIND_AUTO = 1,  /* the CFI walk; a module that keeps frame pointers but whose table
				* does not fit gets the frame-pointer rule (user space) */
	LEAK_UNWIND_DWARF = 2, /* the CFI walk, tables only */
};

/* How the CFA of a frame is found. */
enum leak_unwind_cfa {
	LEAK_CFA_NONE = 0,	  /* no row: the pc is in a gap of the table */
	LEAK_CFA_RSP = 1,	  /* rsp + cfa_off */
	LEAK_CFA_RBP = 2,	  /* rbp + cfa_off */
	LEAK_CFA_DEREF_RBP = 3,	  /* *(rbp + cfa_off): stack-realigning functions (DRAP) */
	LEAK_CFA_END = 4,	  /* the return address is undefined: outermost frame (_start) */
	LEAK_CFA_UNSUPPORTED = 5, /* a rule the walker does not do (PLT, signal frame, asm) */
};

/* Where the caller's rbp is. */
enum leak_unwind_rbp {
	LEAK_RBP_SAME = 0,	/* unchanged: this frame did not save it */
	LEAK_RBP_AT_CFA = 1,	/* saved at CFA + rbp_off */
	LEAK_RBP_AT_RBP = 2,	/* saved at rbp + rbp_off (DRAP frames) */
	LEAK_RBP_UNDEFINED = 3, /* lost */
};

/* One unwind rule; `unwind_rules` holds each distinct one once. */
struct leak_unwind_rule {
	__s32 cfa_off;
	__s16 rbp_off;
	__u8 cfa_type; /* enum leak_unwind_cfa */
	__u8 rbp_type; /* enum leak_unwind_rbp */
};

/* Rule index 0 is the "no row" rule (a gap); 1 is the frame-pointer rule. */
#define LEAK_UNWIND_RULE_GAP 0
#define LEAK_UNWIND_RULE_FP 1

/* A row of a module's table: from file offset `off` up to the next row's, rule `rule`. Each
 * module's rows are sorted by `off`, and a gap after the module's last covered range ends with a
 * row of rule 0. */
struct leak_unwind_row {
	__u32 off;
	__u32 rule;
};

/* Key of `unwind_files`: the file as the kernel sees a mapping of it. */
struct leak_unwind_file_key {
	__u64 dev; /* kernel dev_t of its filesystem: major << 20 | minor */
	__u64 ino;
};

/* A record of `unwind_notify` for a file the walker met without a table: which process mapped it,
 * for user space to open it there (a followed child maps files the first process never did). A
 * request to read the mappings again is a record of 8 bytes. */
struct leak_unwind_missing_note {
	struct leak_unwind_file_key key;
	__u32 tgid;
	__u32 pad;
};

enum leak_unwind_file_kind {
	LEAK_UNWIND_FILE_TABLE = 1, /* rows [first, first + count) of `unwind_rows` */
	LEAK_UNWIND_FILE_FP = 2,    /* the frame-pointer rule everywhere (anonymous code: a JIT's) */
	LEAK_UNWIND_FILE_NONE = 3,  /* no usable CFI (or no room left for it): the frame-pointer
				     * rule, stacks marked incomplete */
};

/* leak_unwind_file.flags */
#define LEAK_UNWIND_FILE_KEEPS_FP 1 /* most functions set up rbp as a frame pointer */

struct leak_unwind_file {
	__u32 first;
	__u32 count;
	__u32 kind;  /* enum leak_unwind_file_kind */
	__u32 flags; /* LEAK_UNWIND_FILE_KEEPS_FP */
};

/* One executable file mapping of the target, for the walker to find a pc's module without
 * bpf_find_vma() (which needs the mmap lock, and fails while another thread maps or unmaps).
 * User space keeps them sorted by start in one half of `unwind_mappings` and publishes the half
 * through `unwind_mappings_ref` (.bss): first index << 32 | count. */
struct leak_unwind_mapping {
	__u64 start;
	__u64 end;
	__u64 offset; /* file offset of start */
	__u64 ino;    /* with `start`, the key of `unwind_recorded` */
	struct leak_unwind_file file;
};

/* Entries of each half of `unwind_mappings`; mappings beyond these are found by bpf_find_vma(). */
#define LEAK_UNWIND_MAX_MAPPINGS 4096

/* Key of `unwind_cache`: a return address, cached in epoch `epoch` (unwind_epoch, .bss). */
struct leak_unwind_cache_key {
	__u64 pc;
	__u32 epoch;
	__u32 pad;
};

/* Most rows of one module's table: the binary search does this many halvings. */
#define LEAK_UNWIND_SEARCH_STEPS 24
#define LEAK_UNWIND_MAX_FILE_ROWS (1u << LEAK_UNWIND_SEARCH_STEPS)

/* Stack ids of CFI-walked stacks: bit 51 set, the 51 bits below a hash of the frames. Below 2^52:
 * apart from bpf_get_stackid()'s ids (< 2^32) and from LEAK_OVERFLOW_STACK_TAG's (bit 52, see
 * bpf/abi/leak.h), and a JS number holds each exactly. */
#define LEAK_UNWIND_ID_BIT (1ULL << 51)
#define LEAK_UNWIND_ID_MASK (LEAK_UNWIND_ID_BIT - 1)

/* Flags of a stored stack. */
enum leak_unwind_stack_flags {
	/* A frame was in a module with no table yet (or none at all) and was stepped over with the
	 * frame-pointer rule: the frames may be incomplete. */
	LEAK_UNWIND_INCOMPLETE = 1,
	/* The walk stopped before the outermost frame (a rule it does not do, unreadable memory, a
	 * CFA that did not grow, the mmap lock taken): the frames are right but the outer ones are
	 * missing. */
	LEAK_UNWIND_TRUNCATED = 2,
};

/* Value of `unwind_stacks` (key: the stack id). The map's value size is cut to the configured
 * depth before load: frames[] then has `depth` entries. */
struct leak_unwind_stack {
	__u64 check; /* a second hash of the frames: a different stack with the same id is a collision */
	__u32 len;
	__u32 flags; /* enum leak_unwind_stack_flags */
	__u64 frames[128];
};

/* Counters, one copy per CPU in `unwind_counters`, summed by user space. */
struct leak_unwind_counters {
	__u64 walks;		/* stacks walked with the CFI tables */
	__u64 frames;		/* frames those walks produced */
	__u64 cache_hits;	/* frames whose rule came from `unwind_cache` */
	__u64 cache_misses;	/* frames whose rule was looked up in the tables */
	__u64 new_stacks;	/* distinct stacks stored */
	__u64 incomplete;	/* walks marked LEAK_UNWIND_INCOMPLETE */
	__u64 truncated;	/* walks marked LEAK_UNWIND_TRUNCATED */
	__u64 collisions;	/* a different stack already had the id: recorded without a stack */
	__u64 failures;		/* no stack recorded: `unwind_stacks` full, or scratch busy */
	__u64 missing_files;	/* modules seen with no table loaded yet (user space is told) */
	__u64 busy;		/* walks cut short: bpf_find_vma() found the mmap lock taken */
	__u64 totals_dropped;	/* `stack_totals` updates lost: the map was full */
};

/* Key and value of `stack_totals`: outstanding bytes and blocks per stack id (-1: no stack). */
struct leak_stack_total {
	__s64 bytes;
	__s64 blocks;
};

#endif /* EBPF_LEAK_UNWIND_TYPES_H */
