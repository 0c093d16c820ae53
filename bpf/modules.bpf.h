/* The executable mappings stacks pass through, by start address, for the symbolizer in user space
 * (read by native/tracer/trace_session_reads.cc): the first time a stack goes through
 * a mapping, bpf_find_vma() hands it to record_mapping().
 *
 * Used by bpf/unwind.bpf.h, whose walks record the mappings they meet, and by bpf/stacks.bpf.h. */
#ifndef EBPF_LEAK_MODULES_H
#define EBPF_LEAK_MODULES_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "abi/leak.h"

/* Executable mappings stacks passed through, by start address. Not preallocated: a few dozen
 * are used, and 8192 preallocated took ~13 ms to create. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct leak_module);
	__uint(max_entries, 8192);
} modules SEC(".maps");

/* A leak_module is too large for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct leak_module);
	__uint(max_entries, 1);
} module_scratch SEC(".maps");

static long record_mapping(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	__u32 zero = 0;
	struct leak_module *m = bpf_map_lookup_elem(&module_scratch, &zero), *known;
	struct dentry *dentry;
	struct file *file;
	__u64 start = vma->vm_start;

	if (!m)
		return 0;
	known = bpf_map_lookup_elem(&modules, &start);
	file = vma->vm_file;
	if (!file) /* anonymous: JIT code, named from perf maps in user space */
		return 0;
	m->inode = BPF_CORE_READ(file, f_inode, i_ino);
	/* The same start with the same file is already known; a different file there (a library
	 * loaded where a dlclose()d one was) replaces it. */
	if (known && known->inode == m->inode && known->end == vma->vm_end)
		return 0;
	m->start = start;
	m->end = vma->vm_end;
	m->file_offset = vma->vm_pgoff << 12;
	m->dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	dentry = BPF_CORE_READ(file, f_path.dentry);
	for (int i = 0; i < LEAK_PATH_PARTS; i++) {
		struct dentry *parent = BPF_CORE_READ(dentry, d_parent);

		if (!dentry || parent == dentry) {
			m->parts[i][0] = 0;
			break;
		}
		bpf_probe_read_kernel_str(m->parts[i], LEAK_PATH_PART_LEN,
					  BPF_CORE_READ(dentry, d_name.name));
		dentry = parent;
	}
	bpf_map_update_elem(&modules, &start, m, BPF_ANY);
	return 0;
}

#endif /* EBPF_LEAK_MODULES_H */
