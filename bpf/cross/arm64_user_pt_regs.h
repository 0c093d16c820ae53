/* Added to vmlinux.h when it comes from another architecture's BTF (a cross build:
 * cmake/aarch64-linux-gnu.cmake). libbpf's bpf_tracing.h reads an arm64 probe's registers through
 * `struct user_pt_regs`, the kernel's user-space ABI (arch/arm64/include/uapi/asm/ptrace.h). It is
 * relocated by CO-RE like the rest of vmlinux.h, as in a build on arm64 itself, against the running
 * kernel's BTF, which has it. */
#ifndef EBPF_LEAK_ARM64_USER_PT_REGS_H
#define EBPF_LEAK_ARM64_USER_PT_REGS_H

struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
} __attribute__((preserve_access_index));

#endif
