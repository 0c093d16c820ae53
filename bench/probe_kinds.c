/* The bench's probe kinds (bench/costs.js): N calls of a function whose first instruction is
 *   nop5   a 5-byte nop: a uprobe there is optimized on kernels that can (6.18: a call into a
 *          trampoline and the uprobe syscall, no breakpoint trap)
 *   push   push %rbp: a breakpoint trap, the instruction emulated (as at glibc's malloc and free)
 *   step   a RIP-relative load: a breakpoint trap, the instruction single-stepped (a second trap)
 * Prints ns per call of wall time and of this process's CPU time (CLOCK_PROCESS_CPUTIME_ID: the
 * kernel's time in its traps included, waits for a CPU not, so a busy machine changes it little).
 *
 *   ebpf-leak-probe-kinds nop5|push|step N */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile long word;

__attribute__((noinline)) void kind_nop5(void) { asm volatile(".byte 0x0f, 0x1f, 0x44, 0x00, 0x00" ::: "memory"); }
__attribute__((noinline)) void kind_push(void) { asm volatile("push %%rbp\n\tpop %%rbp" ::: "memory"); }
__attribute__((noinline)) void kind_step(void) { asm volatile("mov word(%%rip), %%rax" ::: "rax", "memory"); }

static double now_ns(clockid_t clock)
{
	struct timespec t;
	clock_gettime(clock, &t);
	return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
	void (*f)(void);
	double wall, cpu;
	long n;

	if (argc != 3)
		return fprintf(stderr, "usage: ebpf-leak-probe-kinds nop5|push|step N\n"), 2;
	f = !strcmp(argv[1], "nop5") ? kind_nop5 : !strcmp(argv[1], "push") ? kind_push : kind_step;
	n = atol(argv[2]);
	for (int i = 0; i < 1000; i++) /* the first hit of a nop5 probe is a trap that optimizes it */
		f();
	wall = now_ns(CLOCK_MONOTONIC);
	cpu = now_ns(CLOCK_PROCESS_CPUTIME_ID);
	for (long i = 0; i < n; i++)
		f();
	wall = now_ns(CLOCK_MONOTONIC) - wall;
	cpu = now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu;
	printf("wallNsPerCall=%.1f cpuNsPerCall=%.1f\n", wall / (double)n, cpu / (double)n);
	return 0;
}
