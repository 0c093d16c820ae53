/* The outstanding blocks: address -> {size, function, time, thread, stack, mark}.
 *
 * Not a BPF hash map: an update of one (element allocation, bucket lock, RCU free on delete) cost
 * about 0.4 us per malloc+free pair, as much as the rest of the probes' work together. This is an
 * open-addressing table in one array map, lookups of which the verifier inlines: buckets of
 * LEAK_BUCKET_SLOTS keys in one cache line (then their values), each address having two candidate
 * buckets and going to the emptier one ("two choices"; blocks that find both full go to
 * spilled_allocs). Slots are claimed and released with compare-and-swap, so no locks. The map is mmap()able: user space reads it in
 * place, a million blocks in milliseconds (native/tracer/alloc_table_reader.cc).
 */
#ifndef EBPF_LEAK_ALLOC_TABLE_H
#define EBPF_LEAK_ALLOC_TABLE_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "abi/leak.h"
#include "counters.bpf.h"
#include "stack_totals.bpf.h"
#include "traced_processes.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct leak_bucket);
	__uint(max_entries, 1); /* buckets: leak_table_buckets(maxAllocations), set before load */
} allocs SEC(".maps");

/* = allocs' max_entries, for the range reduction below. */
const volatile __u32 table_buckets = 1;

/* Which groups of LEAK_TABLE_GROUP_BUCKETS buckets a block was ever put in: user space reads only
 * those. Reading the whole table touches every page of it (~50 MB for a million blocks), which
 * costs 25-30 ms on a VM whose first touch of a page is a fault in the hypervisor, at every read,
 * however few blocks there are. Set before the block's key is published, never cleared. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1); /* ceil(buckets / LEAK_TABLE_GROUP_BUCKETS), set before load */
} touched_groups SEC(".maps");

/* Blocks whose two buckets were both full. Greedy two choices fill buckets of 8 only so far: under
 * churn (blocks freed and allocated at random while the count stays level) the first block found
 * both its buckets full at 55-60% of the slots, where a run of inserts alone gets to 90%. These
 * blocks are rare while the table has room, and a free looks here only while there are some, so
 * the fast paths stay as they were. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct leak_slot);
	__uint(max_entries, 1); /* leak_spill_entries(maxAllocations), set before load */
} spilled_allocs SEC(".maps");

/* Blocks in spilled_allocs. */
__s64 spilled_blocks = 0;

/* The two buckets of an address: two 32-bit halves of one multiplicative hash (the low bits of
 * an address are alignment zeros), each mapped onto [0, table_buckets) by a multiply-shift. */
static __always_inline void address_buckets(__u64 address, __u32 *first, __u32 *second)
{
	__u64 h = (address ^ (address >> 29)) * 0x9e3779b97f4a7c15ULL;

	*first = (__u32)(((h >> 32) * (__u64)table_buckets) >> 32);
	*second = (__u32)(((h & 0xffffffffULL) * (__u64)table_buckets) >> 32);
}

static __always_inline struct leak_bucket *table_bucket(__u32 index)
{
	return bpf_map_lookup_elem(&allocs, &index);
}

/* Read first: a store only the first time, so the flags' cache lines stay shared between CPUs. */
static __always_inline void group_touched(__u32 bucket)
{
	__u32 group = bucket / LEAK_TABLE_GROUP_BUCKETS;
	__u64 *touched = bpf_map_lookup_elem(&touched_groups, &group);

	if (touched && !*touched)
		*touched = 1;
}

/* The slot of `address` in `b`, or -1. */
static __always_inline int bucket_find(struct leak_bucket *b, __u64 address)
{
#pragma unroll
	for (int i = 0; i < LEAK_BUCKET_SLOTS; i++)
		if (b->keys[i] == address)
			return i;
	return -1;
}

/* Without branches: a branch per slot would have the verifier walk 2^16 paths through two
 * buckets. (k | -k) has its top bit set exactly when k != 0; in asm, because clang turns it back
 * into a comparison. */
static __always_inline __u64 bucket_used_slots(struct leak_bucket *b)
{
	__u64 n = 0;

#pragma unroll
	for (int i = 0; i < LEAK_BUCKET_SLOTS; i++) {
		__u64 k = b->keys[i], used;

		asm volatile("%[used] = %[k]\n\t"
			     "%[used] = -%[used]\n\t"
			     "%[used] |= %[k]\n\t"
			     "%[used] >>= 63"
			     : [used] "=&r"(used)
			     : [k] "r"(k));
		n += used;
	}
	return n;
}

/* Claims an empty slot of `b` (LEAK_SLOT_BUSY until its value is written), or returns -1. */
static __always_inline int bucket_claim(struct leak_bucket *b)
{
#pragma unroll
	for (int i = 0; i < LEAK_BUCKET_SLOTS; i++)
		if (b->keys[i] == 0 && __sync_val_compare_and_swap(&b->keys[i], 0, LEAK_SLOT_BUSY) == 0)
			return i;
	return -1;
}

/* Stores a key whose value was written just before: a reader that sees the key sees the value
 * (x86 keeps stores in order; elsewhere the exchange is a full barrier). */
static __always_inline void key_publish(__u64 *slot, __u64 key)
{
#if defined(__TARGET_ARCH_x86)
	asm volatile("" ::: "memory");
	*(volatile __u64 *)slot = key;
#else
	__sync_lock_test_and_set(slot, key);
#endif
}

/* Writes the value, then the key. */
static __always_inline void slot_publish(struct leak_bucket *b, int i, __u64 address,
					 const struct leak_slot *value)
{
	if (i < 0 || i >= LEAK_BUCKET_SLOTS)
		return;
	b->values[i] = *value;
	key_publish(&b->keys[i], address);
}

/* Into spilled_allocs; as table_insert(). */
static __always_inline int spill_insert(__u64 address, const struct leak_slot *value)
{
	struct leak_slot *old;
	long err = bpf_map_update_elem(&spilled_allocs, &address, value, BPF_NOEXIST);

	if (err == 0) {
		__sync_fetch_and_add(&spilled_blocks, 1);
		stack_totals_add(value->stack_id, (__s64)(value->size_fn & LEAK_SIZE_MASK), 1);
		return 0;
	}
	old = bpf_map_lookup_elem(&spilled_allocs, &address);
	if (!old) /* full */
		return -1;
	stack_totals_add(old->stack_id, -(__s64)(old->size_fn & LEAK_SIZE_MASK), -1);
	*old = *value;
	stack_totals_add(value->stack_id, (__s64)(value->size_fn & LEAK_SIZE_MASK), 1);
	return 0;
}

/* Out of spilled_allocs; as table_take(). */
static __always_inline __s64 spill_take(__u64 address, struct leak_slot *out)
{
	struct leak_slot *v = bpf_map_lookup_elem(&spilled_allocs, &address);
	__u64 size;
	__s64 stack_id;

	if (!v)
		return -1;
	size = v->size_fn & LEAK_SIZE_MASK;
	stack_id = v->stack_id;
	if (out)
		*out = *v;
	if (bpf_map_delete_elem(&spilled_allocs, &address)) /* another thread's free won */
		return -1;
	__sync_fetch_and_add(&spilled_blocks, -1);
	stack_totals_add(stack_id, -(__s64)size, -1);
	return (__s64)size;
}

/* The two below are global functions: the verifier checks each once, on its own, instead of at
 * every call site with every path through the buckets multiplied into the rest of the program. */

/* Adds `address`, keeping `stack_totals`. An address already there (its free was missed: an
 * allocator path we do not probe) is replaced. Returns 0, or -1 when both buckets and
 * spilled_allocs are full. */
static __always_inline int table_insert(__u64 address, __u64 size_fn, __u64 timestamp_ns, __s64 stack_id,
			    __u64 tid_mark)
{
	struct leak_slot value = {
		.size_fn = size_fn,
		.timestamp_ns = timestamp_ns,
		.stack_id = stack_id,
		.tid = (__u32)tid_mark,
		.mark = (__u32)(tid_mark >> 32),
	};
	__u64 size = size_fn & LEAK_SIZE_MASK;
	__u32 first, second;
	struct leak_bucket *a, *b;
	int i;

	address_buckets(address, &first, &second);
	a = table_bucket(first);
	b = table_bucket(second);
	if (!a || !b)
		return -1;
	i = bucket_find(a, address);
	if (i < 0) {
		i = bucket_find(b, address);
		if (i >= 0)
			a = b;
	}
	if (i >= 0 && i < LEAK_BUCKET_SLOTS) {
		struct leak_slot *old = &a->values[i];

		stack_totals_add(old->stack_id, -(__s64)(old->size_fn & LEAK_SIZE_MASK), -1);
		*old = value;
		stack_totals_add(stack_id, (__s64)size, 1);
		return 0;
	}
	if (spilled_blocks && bpf_map_lookup_elem(&spilled_allocs, &address))
		return spill_insert(address, &value);
	if (bucket_used_slots(b) < bucket_used_slots(a)) {
		struct leak_bucket *t = a;
		__u32 u = first;

		a = b;
		b = t;
		first = second;
		second = u;
	}
	i = bucket_claim(a);
	if (i < 0) {
		a = b;
		first = second;
		i = bucket_claim(a);
	}
	if (i < 0)
		return spill_insert(address, &value);
	group_touched(first);
	slot_publish(a, i, address, &value);
	stack_totals_add(stack_id, (__s64)size, 1);
	return 0;
}

/* Removes `address`, keeping `stack_totals`, and copies its record to `out` (when not NULL).
 * Returns the block's size, or -1 when it is not there. Of two threads freeing one block (a double
 * free), only the one whose compare-and-swap wins gets its size. */
static __always_inline __s64 table_take(__u64 address, struct leak_slot *out)
{
	__u32 first, second;
	struct leak_bucket *a, *b;
	__s64 stack_id;
	__u64 size;
	int i;

	address_buckets(address, &first, &second);
	a = table_bucket(first);
	if (!a)
		return -1;
	i = bucket_find(a, address);
	if (i < 0) {
		b = table_bucket(second);
		if (!b)
			return -1;
		i = bucket_find(b, address);
		a = b;
	}
	if (i < 0 || i >= LEAK_BUCKET_SLOTS)
		return spilled_blocks ? spill_take(address, out) : -1;
	/* Read before the slot is released: after that, another allocation may take it. */
	size = a->values[i].size_fn & LEAK_SIZE_MASK;
	stack_id = a->values[i].stack_id;
	if (out)
		*out = a->values[i];
	if (__sync_val_compare_and_swap(&a->keys[i], address, 0) != address)
		return -1;
	stack_totals_add(stack_id, -(__s64)size, -1);
	return (__s64)size;
}

/* Some block had no room in `allocs` (read by bpf/heap_errors.bpf.h: a release of an unknown
 * address may then be that block's). Set before the block's address reaches the program, so
 * every free of it sees it set. */
bool blocks_dropped = false;

/* Into `allocs` under the current process's key, or counted as dropped. */
static __always_inline void track_block(__u64 address, __u64 size_fn, __u64 timestamp_ns,
					  __s64 stack_id, __u64 tid_mark)
{
	if (table_insert(process_key(address), size_fn, timestamp_ns, stack_id, tid_mark)) {
		COUNT(dropped_allocs, 1);
		if (!blocks_dropped)
			blocks_dropped = true;
	}
}

#endif /* EBPF_LEAK_ALLOC_TABLE_H */
