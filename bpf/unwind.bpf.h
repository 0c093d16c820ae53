/* One file by design: the walker's maps and the bounded loop that reads them are verified together; the records shared with user space are bpf/abi/unwind_types.h. */
/* The CFI stack walker: user stacks through code built without frame pointers.
 *
 * alloc_stack() (bpf/stacks.bpf.h) calls unwind_stack(). Mappings its walks meet go to
 * bpf/modules.bpf.h's record_mapping(). Records and rules shared with user
 * space: bpf/abi/unwind_types.h; tables built and loaded by native/unwind/unwind_table.cc, native/unwind/unwinder.cc.
 *
 * The walk starts in the allocator's return probe, from the registers the caller has once the
 * allocator returned: ip is the return address (the caller's next instruction), sp and bp the
 * caller's. Each step finds the rule of the frame's return address (the row of the call
 * instruction before it), computes the CFA, reads the return address at CFA - 8 and, when the
 * frame saved it, the caller's rbp; the caller's sp is the CFA.
 *
 * Cost, paid once per call site rather than once per allocation where it can be:
 *  - a return address's rule is looked up in the tables (its mapping in the table user space
 *    keeps of the target's executable mappings, `unwind_mappings`; the module's rows, a binary
 *    search) the first time that address is seen, then kept in `unwind_cache` and in a per-CPU
 *    direct-mapped cache in front of it (`unwind_l1`). Only a mapping user space has not listed
 *    yet takes bpf_find_vma(), which needs the mmap lock: another thread mapping or unmapping
 *    makes it fail, and the walk then stops there (counted as busy and truncated), never
 *    guesses. The first time a mapping is met, bpf_find_vma() also records it for the
 *    symbolizer (modules.bpf.h's record_mapping()), retried on later walks until it could;
 *  - the stack is read from a per-CPU copy of the page the frames are in (one
 *    bpf_probe_read_user() per page rather than one or two per frame);
 *  - the frames of each distinct stack are stored once, in `unwind_stacks`, under a 51-bit hash
 *    of the frames; a second, independent 64-bit hash tells a different stack that happens to
 *    have the same id (a collision: counted, and the allocation gets no stack rather than the
 *    other one's).
 * bench/unwind.mjs: about 20-25 ns a frame, less than bpf_get_stackid()'s frame-pointer walk.
 *
 * A module without a table yet (just dlopen()ed, or exec()ed into after attach) is stepped over
 * with the frame-pointer rule and the stack marked incomplete (counted); user space is told
 * through `unwind_notify` and loads its table, so the next stacks through it are exact. Caches and
 * the mapping table are per address space: a walk in another one than the last (the target
 * exec()ed) moves the epoch, and a mapping table read for another one is not used.
 * A walk that cannot go on (a rule it does not do, unreadable stack, a CFA that does not grow)
 * keeps the frames it has and is counted as truncated. */
#ifndef EBPF_LEAK_UNWIND_H
#define EBPF_LEAK_UNWIND_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "abi/unwind_types.h"
#include "modules.bpf.h"

#ifndef EBUSY
#define EBUSY 16
#endif
#ifndef EEXIST
#define EEXIST 17
#endif


/* Set by user space before load (native/unwind/unwinder.cc). */
const volatile __u32 unwind_mode = LEAK_UNWIND_FP;
const volatile __u32 unwind_depth = 32; /* frames kept, at most 127 */

/* Rows of every loaded module's table; user space writes them through mmap(). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct leak_unwind_row);
	__uint(max_entries, 1 << 19); /* resized before load */
} unwind_rows SEC(".maps");

/* Distinct rules, indexed by leak_unwind_row.rule; 0 and 1 are fixed (see unwind_types.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct leak_unwind_rule);
	__uint(max_entries, 65536);
} unwind_rules SEC(".maps");

/* Modules user space has looked at, with or without a table. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct leak_unwind_file_key);
	__type(value, struct leak_unwind_file);
	__uint(max_entries, 8192);
} unwind_files SEC(".maps");

/* Modules stacks went through that user space has not looked at yet: key -> start of the
 * mapping seen. User space deletes an entry once it added the module to `unwind_files`. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct leak_unwind_file_key);
	__type(value, __u64);
	__uint(max_entries, 1024);
} unwind_missing SEC(".maps");

/* Wakes user space up when `unwind_missing` got a new module, or a pc was in no mapping of
 * `unwind_mappings`. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} unwind_notify SEC(".maps");

/* The target's executable file mappings, two halves of LEAK_UNWIND_MAX_MAPPINGS; user space
 * writes the one not in use through mmap(), then switches `unwind_mappings_ref` to it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct leak_unwind_mapping);
	__uint(max_entries, 2 * LEAK_UNWIND_MAX_MAPPINGS);
} unwind_mappings SEC(".maps");

/* first index << 32 | count of the half in use. */
__u64 unwind_mappings_ref = 0;
/* The address space each half was read from (user space copies unwind_cur_mm before reading
 * /proc/PID/maps): a table of another one (the launcher's, the program's before it exec()ed
 * again) is not used. */
__u64 unwind_half_mm[2] = {};
/* A walk met a pc in no mapping of the table: user space is asked to read the maps again. Set
 * here, cleared by user space. */
__u32 unwind_need_scan = 0;

/* Mappings recorded for the symbolizer (leak.bpf.c's `modules`), so bpf_find_vma() is asked once
 * per mapping: {start, ino}. */
struct unwind_recorded_key {
	__u64 start;
	__u64 ino;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct unwind_recorded_key);
	__type(value, __u8);
	__uint(max_entries, 8192);
} unwind_recorded SEC(".maps");

/* A return address's rule, and the kind of module it is in. */
struct unwind_cached {
	struct leak_unwind_rule rule;
	__u32 kind;  /* enum leak_unwind_file_kind */
	__u32 flags; /* leak_unwind_file.flags */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct leak_unwind_cache_key);
	__type(value, struct unwind_cached);
	__uint(max_entries, 65536);
} unwind_cache SEC(".maps");

/* In front of `unwind_cache`: a direct-mapped cache per CPU, slot = hash of the return address.
 * Its lookup is a few instructions (the verifier inlines array lookups) where a hash map's costs
 * a hash and a bucket walk, and the walk looks up every frame. A slot is written pc = 0, then the
 * rule, then pc, and read pc, rule, pc: a walk preempted by another on its CPU (uprobe programs
 * can be) never takes half of one slot with half of another. */
struct unwind_slot {
	__u64 pc;
	__u32 epoch; /* unwind_epoch when filled */
	__u32 pad;
	struct unwind_cached c;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct unwind_slot);
	__uint(max_entries, 8192); /* a power of two, = unwind_slot_mask + 1, set before load */
} unwind_l1 SEC(".maps");

const volatile __u32 unwind_slot_mask = 8191;
/* Rules cached before the epoch moved are stale (both caches check it). It moves when user space
 * saw code unmapped (it also deletes those addresses from `unwind_cache`), and when a walk finds
 * the target in another address space than the last walk did (an exec: every address means
 * something else). */
__u32 unwind_epoch = 0;
/* The address space (mm_struct) of the last walk. */
__u64 unwind_cur_mm = 0;
/* Where that address space's uretprobes return through (its XOL page), 0 until it has one. */
__u64 unwind_cur_trampoline = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	/* Sizes, not types: cut to the depth before load, the value no longer matches its type's BTF,
	 * and the kernel would refuse the map once before libbpf made it without. */
	__uint(key_size, sizeof(__u64)); /* stack id */
	__uint(value_size, sizeof(struct leak_unwind_stack));
	__uint(max_entries, 65536); /* and the value cut to the depth, before load */
} unwind_stacks SEC(".maps");

/* A walk's state: ip, sp and bp of the frame it is at, the hashes of the frames so far. */
struct unwind_walk {
	__u64 ip, sp, bp;
	__u64 h1, h2;
	__u32 n;
	__u32 flags;
	__u32 misses;
	__u32 busy;
	__u64 trampoline; /* unwind_cur_trampoline when the walk began */
	struct unwind_cached c; /* the frame's rule */
};

struct unwind_scratch {
	/* Thread id of the walk using this CPU's scratch, 0 when none. A uprobe program can be
	 * preempted, and another thread's walk run on the same CPU meanwhile: that one finds `busy`
	 * set and gives up (counted), and a walk that finds a tid other than its own at the end was
	 * overrun and gives up too, so frames are never mixed. (Without -mcpu=v3 there is no
	 * exchange instruction: check, then set, then check again at the end.) */
	__u64 busy;
	/* The walk's state: here rather than on the BPF stack, where it would count towards the
	 * 512 bytes the nested calls of a walk (program, walk, step, rule lookup, bpf_find_vma()
	 * callback, search step) share. */
	struct unwind_walk w;
	struct leak_unwind_stack stack;
	/* A copy of the user stack page the walk is in, from page_lo (an offset in it) to its end:
	 * frames are contiguous above sp, so one copy serves every frame in that page, where a
	 * bpf_probe_read_user() per frame costs as much as the rest of the step. */
	__u64 page_base; /* address of the page; 0: none */
	__u64 page_lo;
	__u8 page[8192]; /* 4096 used; twice that so the verifier sees any copy fits */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct unwind_scratch);
	__uint(max_entries, 1);
} unwind_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct leak_unwind_counters);
	__uint(max_entries, 1);
} unwind_counters SEC(".maps");

#define UNWIND_COUNT(field, n)                                                 \
	do {                                                                   \
		__u32 zero__ = 0;                                              \
		struct leak_unwind_counters *c__ =                             \
			bpf_map_lookup_elem(&unwind_counters, &zero__);        \
		if (c__)                                                       \
			__sync_fetch_and_add(&c__->field, (n));                \
	} while (0)

#if defined(__TARGET_ARCH_x86)

/* Highest user-space address on x86-64 (4-level paging; 5-level is larger still, but a user stack
 * or code there is not something this walker meets). Anything above is no return address. */
#define UNWIND_USER_TOP 0x7ffffffff000ULL

/* What a frame's rule lookup found. */
enum unwind_found {
	UNWIND_FOUND = 0,   /* the module's rule: exact */
	UNWIND_GUESS = 1,   /* no table for this module (yet): the frame-pointer rule, a guess */
	UNWIND_NO_VMA = 2,  /* not in any mapping: not a code address */
	UNWIND_BUSY = 3,    /* bpf_find_vma() could not take the mmap lock: unknown this time */
};

struct unwind_lookup {
	__u64 pc; /* return address */
	struct unwind_cached found;
	__u32 result; /* enum unwind_found */
	__u16 cacheable;
	__u16 has_file;
};

static const struct leak_unwind_rule unwind_fp_rule = {
	.cfa_type = LEAK_CFA_RBP, .cfa_off = 16, .rbp_type = LEAK_RBP_AT_CFA, .rbp_off = -16,
};

/* Binary search state: the row of `off` is in [lo, hi). */
struct unwind_search_state {
	__u32 lo, hi, off, pad;
};

static long unwind_search_step(__u32 i, void *data)
{
	struct unwind_search_state *st = data;
	struct leak_unwind_row *row;
	__u32 mid;

	if (st->hi - st->lo <= 1)
		return 1;
	mid = st->lo + (st->hi - st->lo) / 2;
	row = bpf_map_lookup_elem(&unwind_rows, &mid);
	if (!row)
		return 1;
	if (row->off <= st->off)
		st->lo = mid;
	else
		st->hi = mid;
	return 0;
}

/* Row of `off` in rows [first, first + count): the last one that starts at or before it. A
 * bpf_loop() callback, not a bounded loop: verified once, where an unrolled search multiplies
 * the verifier's states by its branches. */
static __always_inline int unwind_search(__u32 first, __u32 count, __u32 off, __u32 *rule)
{
	struct unwind_search_state st = { .lo = first, .hi = first + count, .off = off };
	struct leak_unwind_row *row;
	__u32 lo;

	bpf_loop(LEAK_UNWIND_SEARCH_STEPS, unwind_search_step, &st, 0);
	lo = st.lo;
	row = bpf_map_lookup_elem(&unwind_rows, &lo);
	if (!row || row->off > off)
		return -1;
	*rule = row->rule;
	return 0;
}

/* The rule for file offset `off` of a known module. */
static __always_inline void unwind_file_rule(struct leak_unwind_file *f, __u64 off, struct unwind_lookup *lk)
{
	struct leak_unwind_rule *r;
	__u32 rule;

	lk->found.kind = f->kind;
	lk->found.flags = f->flags;
	lk->cacheable = 1;
	lk->result = UNWIND_FOUND;
	if (f->kind == LEAK_UNWIND_FILE_FP) {
		lk->found.rule = unwind_fp_rule;
		return;
	}
	/* LEAK_UNWIND_FILE_NONE: the gap rule, a frame-pointer guess. */
	rule = LEAK_UNWIND_RULE_GAP;
	if (f->kind == LEAK_UNWIND_FILE_TABLE &&
	    (off >> 32 || unwind_search(f->first, f->count, (__u32)off, &rule)))
		rule = LEAK_UNWIND_RULE_GAP;
	r = bpf_map_lookup_elem(&unwind_rules, &rule);
	if (r)
		lk->found.rule = *r;
}

static long unwind_vma_rule(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	struct unwind_lookup *lk = data;
	struct leak_unwind_file_key key;
	struct leak_unwind_file *f;
	struct file *file = vma->vm_file;
	__u64 start = vma->vm_start;

	if (!file) {
		/* Anonymous code (a JIT's): no table can describe it; JITs keep frame pointers. Not
		 * cached: the code there changes. */
		lk->found.rule = unwind_fp_rule;
		lk->found.kind = LEAK_UNWIND_FILE_FP;
		lk->result = UNWIND_FOUND;
		return 0;
	}
	lk->has_file = 1;
	key.dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	key.ino = BPF_CORE_READ(file, f_inode, i_ino);
	f = bpf_map_lookup_elem(&unwind_files, &key);
	if (!f) {
		if (bpf_map_update_elem(&unwind_missing, &key, &start, BPF_NOEXIST) == 0) {
			struct leak_unwind_missing_note note = {
				.key = key,
				.tgid = bpf_get_current_pid_tgid() >> 32,
			};

			UNWIND_COUNT(missing_files, 1);
			bpf_ringbuf_output(&unwind_notify, &note, sizeof(note), 0);
		}
		lk->found.rule = unwind_fp_rule;
		lk->found.kind = 0;
		lk->result = UNWIND_GUESS;
		return 0;
	}
	/* The call instruction's row: the return address may already be the next function's (a
	 * call to a noreturn function ending this one). */
	unwind_file_rule(f, lk->pc - 1 - start + (vma->vm_pgoff << 12), lk);
	return 0;
}

struct unwind_map_search {
	__u32 lo, hi;
	__u64 pc;
};

static long unwind_map_step(__u32 i, void *data)
{
	struct unwind_map_search *st = data;
	struct leak_unwind_mapping *m;
	__u32 mid;

	if (st->hi - st->lo <= 1)
		return 1;
	mid = st->lo + (st->hi - st->lo) / 2;
	m = bpf_map_lookup_elem(&unwind_mappings, &mid);
	if (!m)
		return 1;
	if (m->start <= st->pc)
		st->lo = mid;
	else
		st->hi = mid;
	return 0;
}

/* The mapping of `pc` in the table user space keeps; NULL when it is not there. */
static __always_inline struct leak_unwind_mapping *unwind_find_mapping(__u64 pc)
{
	__u64 ref = unwind_mappings_ref;
	struct unwind_map_search st = { .lo = ref >> 32, .hi = (ref >> 32) + (__u32)ref, .pc = pc };
	struct leak_unwind_mapping *m;
	__u32 lo;

	__u64 mm = (ref >> 32) ? unwind_half_mm[1] : unwind_half_mm[0];

	if (!(__u32)ref || mm != unwind_cur_mm)
		return NULL;
	bpf_loop(14, unwind_map_step, &st, 0); /* 2^14 > 2 * LEAK_UNWIND_MAX_MAPPINGS */
	lo = st.lo;
	m = bpf_map_lookup_elem(&unwind_mappings, &lo);
	if (!m || pc < m->start || pc >= m->end)
		return NULL;
	return m;
}

/* Asks user space to read the target's mappings again (once until it did). */
static __always_inline void unwind_request_scan(void)
{
	__u64 one = 1;

	if (unwind_need_scan)
		return;
	unwind_need_scan = 1;
	bpf_ringbuf_output(&unwind_notify, &one, sizeof(one), 0);
}

#define UNWIND_CACHEABLE 0x100

/* A return address's rule when neither cache has it: its mapping (from the table user space
 * keeps, else from bpf_find_vma()), that module's table. The first time a mapping is met it is
 * recorded for the symbolizer too. A global function: the verifier checks it once, on its own
 * (as a static one, it walked it again on every path of the caller). Returns enum unwind_found,
 * | UNWIND_CACHEABLE when the rule is the module's own and its mapping is recorded. */
__noinline int unwind_lookup_slow(__u64 pc, __u32 epoch, struct unwind_cached *out)
{
	struct leak_unwind_cache_key ck = { .pc = pc, .epoch = epoch };
	struct unwind_lookup lk = { .pc = pc, .result = UNWIND_NO_VMA };
	struct task_struct *task = bpf_get_current_task_btf();
	struct leak_unwind_mapping *m;
	struct unwind_recorded_key rk;
	__u8 one = 1;

	if (!out)
		return UNWIND_NO_VMA;
	m = unwind_find_mapping(pc - 1);
	if (m && m->file.kind) {
		/* No lock needed: what most lookups take. */
		rk.start = m->start;
		rk.ino = m->ino;
		unwind_file_rule(&m->file, pc - 1 - rk.start + m->offset, &lk);
		if (!bpf_map_lookup_elem(&unwind_recorded, &rk)) {
			/* The mmap lock taken: recorded on a later walk (the rule is not cached till
			 * then), the walk goes on meanwhile. */
			if (bpf_find_vma(task, pc - 1, record_mapping, NULL, 0) == 0)
				bpf_map_update_elem(&unwind_recorded, &rk, &one, BPF_ANY);
			else
				lk.cacheable = 0;
		}
	} else {
		/* A mapping user space has not seen yet (or beyond its table): ask the kernel. */
		unwind_request_scan();
		if (bpf_find_vma(task, pc - 1, unwind_vma_rule, &lk, 0) == -EBUSY) {
			/* Another thread holds the mmap lock (mapping or unmapping): nothing known about
			 * this frame's caller this time. */
			lk.result = UNWIND_BUSY;
			lk.cacheable = 0;
		} else if (lk.has_file && bpf_find_vma(task, pc - 1, record_mapping, NULL, 0) != 0) {
			lk.cacheable = 0;
		}
	}
	if (lk.cacheable)
		bpf_map_update_elem(&unwind_cache, &ck, &lk.found, BPF_ANY);
	*out = lk.found;
	return lk.result | (lk.cacheable ? UNWIND_CACHEABLE : 0);
}

/* The rule for the frame whose return address is `pc`. `*misses` counts lookups past the caches. */
static __always_inline __u32 unwind_rule_for(__u64 pc, struct unwind_cached *out, __u32 *misses)
{
	__u32 idx = (__u32)((pc * 0x9e3779b97f4a7c15ULL) >> 40) & unwind_slot_mask;
	__u32 epoch = unwind_epoch;
	struct unwind_slot *slot = bpf_map_lookup_elem(&unwind_l1, &idx);
	struct leak_unwind_cache_key ck = { .pc = pc, .epoch = epoch };
	struct unwind_cached *c;
	__u64 check;
	int found;

	if (slot && slot->pc == pc && slot->epoch == epoch) {
		barrier();
		*out = slot->c;
		barrier();
		check = slot->pc;
		if (check == pc)
			return UNWIND_FOUND;
	}
	c = bpf_map_lookup_elem(&unwind_cache, &ck);
	if (c) {
		*out = *c;
		found = UNWIND_FOUND | UNWIND_CACHEABLE;
	} else {
		(*misses)++;
		found = unwind_lookup_slow(pc, epoch, out);
	}
	if (slot && (found & UNWIND_CACHEABLE)) {
		slot->pc = 0;
		barrier();
		slot->epoch = epoch;
		slot->c = *out;
		barrier();
		slot->pc = pc;
	}
	return found & 0xff;
}

static __always_inline __u64 unwind_mix(__u64 h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

/* 8 bytes of the user stack at `address`, from the page copy when it covers it. */
static __always_inline int unwind_read(struct unwind_scratch *s, __u64 *out, __u64 address)
{
	__u64 base = address & ~4095ULL;
	__u32 off = address & 4088;

	if (address & 7)
		return bpf_probe_read_user(out, sizeof(*out), (const void *)address);
	if (base != s->page_base || off < s->page_lo) {
		if (bpf_probe_read_user(&s->page[off], 4096 - off, (const void *)address)) {
			s->page_base = 0;
			return bpf_probe_read_user(out, sizeof(*out), (const void *)address);
		}
		s->page_base = base;
		s->page_lo = off;
	}
	*out = *(__u64 *)&s->page[off];
	return 0;
}

/* The return address a uretprobe replaced with its trampoline at stack slot `slot`: the kernel
 * keeps it, per thread, until the function returns. Another tracer's return probe on a function
 * up the stack (or ours, on an operator that calls the allocator) leaves the trampoline there.
 * A global function: the verifier checks its loop once. 0 when the thread has none for `slot`. */
__noinline __u64 unwind_hijacked_return(__u64 slot)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct return_instance *ri = BPF_CORE_READ(task, utask, return_instances);

	for (int i = 0; i < 16 && ri; i++) {
		if (BPF_CORE_READ(ri, stack) == slot)
			return BPF_CORE_READ(ri, orig_ret_vaddr);
		ri = BPF_CORE_READ(ri, next);
	}
	return 0;
}

/* One frame: record ip, then step to the caller. Returns 1 to stop. */
static __always_inline long unwind_frame(struct unwind_walk *w, struct unwind_scratch *s)
{
	struct unwind_cached *c = &w->c;
	__u64 cfa, ra, bp, ip = w->ip;
	__u32 found;

	if (!ip || ip >= UNWIND_USER_TOP)
		return 1;
	s->stack.frames[w->n & 127] = ip;
	w->n++;
	w->h1 = (w->h1 ^ ip) * 0x9e3779b97f4a7c15ULL;
	w->h2 = ((w->h2 + ip) * 0xc2b2ae3d27d4eb4fULL) ^ (w->h2 >> 29);

	found = unwind_rule_for(ip, c, &w->misses);
	if (found == UNWIND_BUSY) {
		/* This frame is right; its caller is not known this time. */
		w->flags |= LEAK_UNWIND_TRUNCATED;
		w->busy = 1;
		return 1;
	}
	if (found == UNWIND_NO_VMA) {
		/* ip itself was read from the stack by the previous step and is not code: that step's
		 * rule was a wrong guess (or the stack is damaged). Drop the frame. */
		w->n--;
		w->flags |= LEAK_UNWIND_TRUNCATED;
		return 1;
	}
	if (found == UNWIND_FOUND && c->rule.cfa_type == LEAK_CFA_NONE && !w->bp) {
		/* Code without CFI, and rbp 0: the ABI's mark of the outermost frame (_start and ld.so's
		 * _dl_start_user clear rbp before their call). Complete. */
		return 1;
	}
	if (found == UNWIND_GUESS || c->rule.cfa_type == LEAK_CFA_NONE) {
		w->flags |= LEAK_UNWIND_INCOMPLETE;
		c->rule = unwind_fp_rule;
	}
	/* Few branches on purpose: each one multiplies what the verifier walks. */
	if (c->rule.cfa_type == LEAK_CFA_END)
		return 1; /* the outermost frame: complete */
	if (c->rule.cfa_type < LEAK_CFA_RSP || c->rule.cfa_type > LEAK_CFA_DEREF_RBP) {
		w->flags |= LEAK_UNWIND_TRUNCATED;
		return 1;
	}
	cfa = (c->rule.cfa_type == LEAK_CFA_RSP ? w->sp : w->bp) + c->rule.cfa_off;
	if (c->rule.cfa_type == LEAK_CFA_DEREF_RBP && unwind_read(s, &cfa, cfa)) {
		w->flags |= LEAK_UNWIND_TRUNCATED;
		return 1;
	}
	/* The caller's frame is above this one: anything else is a wrong rule or a damaged stack. */
	if (cfa <= w->sp || cfa >= UNWIND_USER_TOP || unwind_read(s, &ra, cfa - 8)) {
		w->flags |= LEAK_UNWIND_TRUNCATED;
		return 1;
	}
	if (ra == w->trampoline && ra)
		ra = unwind_hijacked_return(cfa - 8);
	bp = w->bp;
	if (c->rule.rbp_type == LEAK_RBP_AT_CFA || c->rule.rbp_type == LEAK_RBP_AT_RBP) {
		if (unwind_read(s, &bp, (c->rule.rbp_type == LEAK_RBP_AT_CFA ? cfa : w->bp) + c->rule.rbp_off))
			bp = 0;
	} else if (c->rule.rbp_type != LEAK_RBP_SAME) {
		bp = 0;
	}
	w->ip = ra;
	w->sp = cfa;
	w->bp = bp;
	return 0;
}

static long unwind_step(__u32 i, void *data)
{
	struct unwind_scratch *s;
	struct unwind_walk *w;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&unwind_scratch, &zero);
	if (!s)
		return 1;
	w = &s->w;
	return unwind_frame(w, s);
}

/* Stores the walked stack; its id, or -1. A stack stored for the first time also records the
 * mapping of `top` (when not 0) for the symbolizer. */
static __always_inline __s64 unwind_store(struct unwind_scratch *s, struct unwind_walk *w, __u64 top)
{
	struct leak_unwind_stack *old;
	__u64 h1 = unwind_mix(w->h1 ^ w->n), h2 = unwind_mix(w->h2 + w->n + 1);
	__u64 id = LEAK_UNWIND_ID_BIT | (h1 & LEAK_UNWIND_ID_MASK);
	long err;

	s->stack.check = h2;
	s->stack.len = w->n;
	s->stack.flags = w->flags;
	old = bpf_map_lookup_elem(&unwind_stacks, &id);
	if (!old) {
		err = bpf_map_update_elem(&unwind_stacks, &id, &s->stack, BPF_NOEXIST);
		if (!err) {
			UNWIND_COUNT(new_stacks, 1);
			if (top)
				bpf_find_vma(bpf_get_current_task_btf(), top, record_mapping, NULL, 0);
			return id;
		}
		if (err != -EEXIST) {
			UNWIND_COUNT(failures, 1);
			return -1;
		}
		old = bpf_map_lookup_elem(&unwind_stacks, &id);
		if (!old) {
			UNWIND_COUNT(failures, 1);
			return -1;
		}
	}
	if (old->check != h2 || old->len != w->n) {
		UNWIND_COUNT(collisions, 1);
		return -1;
	}
	return id;
}

/* Walks the stack from a return address `ip` with the caller's `sp` and `bp` (an allocation's
 * return probe has them in its registers). False: not handled here (mode fp), the caller takes
 * bpf_get_stackid(). Otherwise *id is the stack id, or -1 (counted).
 *
 * `top` is the probed address when the walk starts below it (from a return address read off the
 * stack): a report shows the probed function on top of the stack, and no frame of the walk need
 * be in its mapping (a preloaded malloc, an operator new), so its mapping is recorded with each
 * new stack. 0 when the walk starts at the probe itself.
 *
 * Every stack is walked, those through code with frame pointers too: with the page copy and the
 * per-CPU rule slots the walk costs less than bpf_get_stackid() (bench/unwind.mjs), and it is
 * right where a frame-pointer walk silently skips or misreads frames.
 *
 * A global function: the verifier checks it once per program, on its own, where an inlined walk
 * was checked again at every call site and on every path leading there (most of the time it took
 * to load the programs). */
__noinline __s64 unwind_walk(__u64 ip, __u64 sp, __u64 bp, __u32 tid, __u64 top)
{
	struct leak_unwind_counters *cnt;
	struct unwind_walk *w;
	struct unwind_scratch *s;
	__u32 zero = 0;
	__u64 mm;
	__s64 id = -1;

	/* Another address space than the last walk's (the target exec()ed): what is cached is not
	 * about it. Threads of one process share theirs, so this is once per exec. */
	mm = (__u64)bpf_get_current_task_btf()->mm;
	if (mm != unwind_cur_mm) {
		unwind_cur_mm = mm;
		unwind_cur_trampoline = 0;
		__sync_fetch_and_add(&unwind_epoch, 1);
	}
	/* The XOL page is made at the first uretprobe or single-step in the address space. */
	if (!unwind_cur_trampoline)
		unwind_cur_trampoline = BPF_CORE_READ(bpf_get_current_task_btf(), mm, uprobes_state.xol_area, vaddr);
	s = bpf_map_lookup_elem(&unwind_scratch, &zero);
	if (!s || s->busy) {
		UNWIND_COUNT(failures, 1);
		return -1;
	}
	s->busy = tid; /* the allocating thread's id (the caller has it: a helper call less) */
	s->page_base = 0;
	w = &s->w;
	__builtin_memset(w, 0, sizeof(*w));
	w->ip = ip;
	w->sp = sp;
	w->bp = bp;
	w->trampoline = unwind_cur_trampoline;
	/* A return address read from the stack by the caller (an operator's, at its entry's stack
	 * pointer), whose slot is just below sp. */
	if (ip == w->trampoline && ip)
		w->ip = unwind_hijacked_return(sp - 8);
	bpf_loop(unwind_depth, unwind_step, NULL, 0);
	if (s->busy != tid) {
		UNWIND_COUNT(failures, 1);
		return -1;
	}
	cnt = bpf_map_lookup_elem(&unwind_counters, &zero);
	if (cnt) {
		/* Statistics only: plain adds (an add lost to a preempting walk on this CPU is no
		 * harm); the counts that report a problem are atomic. */
		cnt->walks++;
		cnt->frames += w->n;
		cnt->cache_misses += w->misses;
		cnt->cache_hits += w->n > w->misses ? w->n - w->misses : 0;
		if (w->flags & LEAK_UNWIND_INCOMPLETE)
			__sync_fetch_and_add(&cnt->incomplete, 1);
		if (w->flags & LEAK_UNWIND_TRUNCATED)
			__sync_fetch_and_add(&cnt->truncated, 1);
		if (w->busy)
			__sync_fetch_and_add(&cnt->busy, 1);
	}
	if (w->n)
		id = unwind_store(s, w, top);
	else
		UNWIND_COUNT(failures, 1);
	s->busy = 0;
	return id;
}

static __always_inline bool unwind_stack_from(__u64 ip, __u64 sp, __u64 bp, __u32 tid, __u64 top, __s64 *id)
{
	if (unwind_mode == LEAK_UNWIND_FP)
		return false;
	*id = unwind_walk(ip, sp, bp, tid, top);
	return true;
}

static __always_inline bool unwind_stack(struct pt_regs *ctx, __u32 tid, __s64 *id)
{
	return unwind_stack_from(PT_REGS_IP(ctx), PT_REGS_SP(ctx), PT_REGS_FP(ctx), tid, 0, id);
}

#else /* not x86-64: no CFI walker; user space keeps unwind_mode at LEAK_UNWIND_FP */

static __always_inline bool unwind_stack_from(__u64 ip, __u64 sp, __u64 bp, __u32 tid, __u64 top, __s64 *id)
{
	return false;
}

static __always_inline bool unwind_stack(struct pt_regs *ctx, __u32 tid, __s64 *id)
{
	return false;
}

#endif

#endif /* EBPF_LEAK_UNWIND_H */
