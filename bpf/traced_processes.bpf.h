/* Several traced processes at once (follow_forks): a fork's child and its parent have the same
 * address layout, so the blocks of each are kept apart by the process's index in the top bits of
 * their key in `allocs` (user-space addresses stay below 2^47 on x86-64 and arm64 with 48-bit
 * virtual addresses), and each process has counters of its own.
 *
 * User space (native/process/) adds a process to `traced_procs` while it is stopped at its fork,
 * copies its parent's blocks to its index, and removes it when it exits: the kernel never sees an
 * untraced child's allocations, nor a process whose index is not set up yet. A child in its
 * parent's address space (vfork) is given the owner's index until its exec: its blocks are in
 * that heap, and the owner may free them.
 */
#ifndef EBPF_LEAK_TRACED_PROCESSES_H
#define EBPF_LEAK_TRACED_PROCESSES_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "abi/leak.h"

/* Off (one process), every lookup below compiles away: the verifier prunes it. */
const volatile bool follow_forks = false;

/* A running process traced without ptrace (attach, no follow_forks): each image it execs keys its
 * blocks and keeps its counters under an index of its own, switched by the exec tracepoint
 * (next_image() in leak.bpf.c), so the blocks of the image before stay apart from the new one's
 * until user space takes them out (native/tracer/trace_session_processes.cc, SyncImages). */
const volatile bool image_keys = false;
__u64 image_bits = 0; /* the current image's index << LEAK_PROCESS_SHIFT */
__u64 images = 0;     /* execs seen: the current image's index is images % LEAK_MAX_PROCESSES */
char image_commands[LEAK_IMAGE_COMMANDS][LEAK_IMAGE_COMMAND_BYTES] = {};
__u32 image_command_bytes[LEAK_IMAGE_COMMANDS] = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);   /* tgid */
	__type(value, __u64); /* the process's index << LEAK_PROCESS_SHIFT */
	__uint(max_entries, LEAK_MAX_PROCESSES);
} traced_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32); /* the process's index */
	__type(value, struct leak_counters);
	__uint(max_entries, LEAK_MAX_PROCESSES);
} process_counters SEC(".maps");

static __always_inline __u64 *process_bits(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (image_keys) /* one process: the probes keep to it already */
		return &image_bits;
	return bpf_map_lookup_elem(&traced_procs, &tgid);
}

/* The current process is one of the traced ones. */
static __always_inline bool process_traced(void)
{
	return process_bits() != NULL;
}

/* The key of `address` in `allocs` for the current process. */
static __always_inline __u64 process_key(__u64 address)
{
	__u64 *bits;

	if (!follow_forks && !image_keys)
		return address;
	bits = process_bits();
	return bits ? address | *bits : address;
}

/* The current process's counters, or NULL when it has none (the caller uses the global ones). */
static __always_inline struct leak_counters *process_counters_cpu(void)
{
	__u64 *bits;
	__u32 index;

	if (!follow_forks && !image_keys)
		return NULL;
	bits = process_bits();
	if (!bits)
		return NULL;
	index = (__u32)(*bits >> LEAK_PROCESS_SHIFT);
	return bpf_map_lookup_elem(&process_counters, &index);
}

#endif /* EBPF_LEAK_TRACED_PROCESSES_H */
