/* The library trace({ preload: true }) and `run --preload` put in a program's LD_PRELOAD: the C
 * allocator's ten entry points, each a 5-byte nop followed by a jump to glibc's own function.
 *
 * A uprobe on glibc's malloc is a breakpoint: every call traps into the kernel. Since 6.18 the
 * kernel turns a uprobe on a 5-byte nop (0f 1f 44 00 00) into a call into a trampoline that makes
 * a system call, which costs a quarter of the trap on some virtual machines (docs/performance.md).
 * glibc's functions begin with no such nop, so the tracer probes these instead: their registers at
 * the nop are the caller's arguments, and the jump leaves the caller's return address on top of
 * the stack for the return probe. malloc and calloc call instead of jumping (CALL_ENTRY below).
 * Nothing here allocates, and every stack is walked from the caller of the entry point, so
 * reports and counts are those of the program without it.
 *
 * The jump targets: glibc exports __libc_malloc and six more of its functions under those names.
 * posix_memalign, aligned_alloc and reallocarray it exports only under their own names, which this
 * library takes, so those are the next definition in lookup order (dlsym(RTLD_NEXT)), looked up at
 * the first call. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

/* The tracer knows this library by this function (lib/target/resolve.ts, which reads function
 * symbols only): its allocator functions are glibc's. Never called. */
__attribute__((visibility("default"))) void ebpf_leak_preload(void) {}

/* dlsym's first version, which every glibc since 2.2.5 (x86-64) defines: in libdl before 2.34, in
 * libc since. The default version of the build's glibc would not load on older ones. */
__asm__(".symver ebpf_leak_dlsym, dlsym@GLIBC_2.2.5");
extern void *ebpf_leak_dlsym(void *handle, const char *name);

typedef int posix_memalign_fn(void **out, size_t alignment, size_t size);
typedef void *aligned_alloc_fn(size_t alignment, size_t size);
typedef void *reallocarray_fn(void *block, size_t count, size_t size);

static posix_memalign_fn first_posix_memalign;
static aligned_alloc_fn first_aligned_alloc;
static reallocarray_fn first_reallocarray;

/* Where the entry points jump: a first call's lookup, then glibc's function. A word-sized store
 * of the same value by two threads at once is harmless. */
__attribute__((visibility("hidden"), used)) posix_memalign_fn *ebpf_leak_posix_memalign = first_posix_memalign;
__attribute__((visibility("hidden"), used)) aligned_alloc_fn *ebpf_leak_aligned_alloc = first_aligned_alloc;
__attribute__((visibility("hidden"), used)) reallocarray_fn *ebpf_leak_reallocarray = first_reallocarray;

static int first_posix_memalign(void **out, size_t alignment, size_t size) {
	ebpf_leak_posix_memalign = (posix_memalign_fn *)ebpf_leak_dlsym(RTLD_NEXT, "posix_memalign");
	return ebpf_leak_posix_memalign(out, alignment, size);
}

static void *first_aligned_alloc(size_t alignment, size_t size) {
	ebpf_leak_aligned_alloc = (aligned_alloc_fn *)ebpf_leak_dlsym(RTLD_NEXT, "aligned_alloc");
	return ebpf_leak_aligned_alloc(alignment, size);
}

static void *first_reallocarray(void *block, size_t count, size_t size) {
	ebpf_leak_reallocarray = (reallocarray_fn *)ebpf_leak_dlsym(RTLD_NEXT, "reallocarray");
	return ebpf_leak_reallocarray(block, count, size);
}

/* One entry point: the nop the probe goes on, then an indirect jump through `target`, a GOT slot
 * or one of the pointers above. Its unwind entry is the initial one (return address on top of the
 * stack) throughout, which is true of both instructions. */
#define FUNCTION_START(name)                                        \
	".text\n"                                                       \
	".globl " #name "\n"                                            \
	".type " #name ",@function\n"                                   \
	".p2align 4\n" #name ":\n"                                      \
	".cfi_startproc\n"
#define NOP5 ".byte 0x0f,0x1f,0x44,0x00,0x00\n"
#define ENTRY(name, target)                                         \
	__asm__(FUNCTION_START(name)                                    \
		NOP5                                                    \
		"jmp *" target "(%rip)\n"                               \
		".cfi_endproc\n"                                        \
		".size " #name ",.-" #name "\n")

/* malloc and calloc, which programs call most: the entry's nop, then a call to glibc's function
 * and a second nop after it. A probe on that one sees the request and the block at once, in place
 * of an entry probe and a return probe: one system call per allocation instead of two
 * (docs/performance.md). The entry's nop is for the frame-pointer walker, which cannot start from
 * up the stack and keeps the two probes (lib/probes/plan.ts). At the second nop:
 *   %rax            the block;
 *   %rbx            malloc's size, calloc's count (callee-saved, so glibc's call keeps it);
 *   %r12            calloc's size; malloc: its low byte is the zero flag at the entry, which
 *                   tells new(0) from malloc(1) in libstdc++'s operator new (bpf/leak.bpf.c);
 *   24(%rsp)        the caller's return address: the stack is walked from the caller, as from a
 *                   return probe.
 * The frame is 24 bytes, keeping the stack aligned for the call. Neither lea nor push nor mov
 * touches the flags, which setz reads as the caller left them. The exported symbols
 * ebpf_leak_malloc_returned and ebpf_leak_calloc_returned mark the second nops. */
#define CALL_ENTRY(name, target, save_request)                      \
	__asm__(FUNCTION_START(name)                                    \
		NOP5                                                    \
		"push %rbx\n"                                           \
		".cfi_adjust_cfa_offset 8\n"                            \
		".cfi_rel_offset %rbx, 0\n"                             \
		"push %r12\n"                                           \
		".cfi_adjust_cfa_offset 8\n"                            \
		".cfi_rel_offset %r12, 0\n"                             \
		save_request                                             \
		"lea -8(%rsp), %rsp\n"                                  \
		".cfi_adjust_cfa_offset 8\n"                            \
		"call *" target "(%rip)\n"                              \
		".globl ebpf_leak_" #name "_returned\n"                 \
		".type ebpf_leak_" #name "_returned,@function\n"        \
		"ebpf_leak_" #name "_returned:\n"                       \
		NOP5                                                    \
		".size ebpf_leak_" #name "_returned,5\n"                \
		"lea 8(%rsp), %rsp\n"                                   \
		".cfi_adjust_cfa_offset -8\n"                           \
		"pop %r12\n"                                            \
		".cfi_adjust_cfa_offset -8\n"                           \
		".cfi_restore %r12\n"                                   \
		"pop %rbx\n"                                            \
		".cfi_adjust_cfa_offset -8\n"                           \
		".cfi_restore %rbx\n"                                   \
		"ret\n"                                                 \
		".cfi_endproc\n"                                        \
		".size " #name ",.-" #name "\n")

CALL_ENTRY(malloc, "__libc_malloc@GOTPCREL", "setz %r12b\nmov %rdi, %rbx\n");
ENTRY(free, "__libc_free@GOTPCREL");
CALL_ENTRY(calloc, "__libc_calloc@GOTPCREL", "mov %rdi, %rbx\nmov %rsi, %r12\n");
ENTRY(realloc, "__libc_realloc@GOTPCREL");
ENTRY(memalign, "__libc_memalign@GOTPCREL");
ENTRY(valloc, "__libc_valloc@GOTPCREL");
ENTRY(pvalloc, "__libc_pvalloc@GOTPCREL");
ENTRY(posix_memalign, "ebpf_leak_posix_memalign");
ENTRY(aligned_alloc, "ebpf_leak_aligned_alloc");
ENTRY(reallocarray, "ebpf_leak_reallocarray");

#ifdef EBPF_LEAK_PRELOAD_CXX
/* libebpf-leak-preload-cxx.so: also C++'s operator delete, every overload, as libstdc++ defines it
 * on glibc: each ends in free() (sized and nothrow ones through operator delete(void*), aligned
 * ones too, their blocks being aligned_alloc's). Used only for a program whose operators are all
 * libstdc++'s (lib/tracer/preload.ts): one replacing operator delete(void*) alone would otherwise
 * lose the sized deletes that libstdc++ forwards to it. operator new stays libstdc++'s: it needs
 * no probe (lib/probes/operators.ts). */
#define DELETE(name) ENTRY(name, "__libc_free@GOTPCREL")
DELETE(_ZdlPv);
DELETE(_ZdlPvm);
DELETE(_ZdlPvRKSt9nothrow_t);
DELETE(_ZdlPvSt11align_val_t);
DELETE(_ZdlPvmSt11align_val_t);
DELETE(_ZdlPvSt11align_val_tRKSt9nothrow_t);
DELETE(_ZdaPv);
DELETE(_ZdaPvm);
DELETE(_ZdaPvRKSt9nothrow_t);
DELETE(_ZdaPvSt11align_val_t);
DELETE(_ZdaPvmSt11align_val_t);
DELETE(_ZdaPvSt11align_val_tRKSt9nothrow_t);
#endif
