/* The bench's allocation workloads (bench/run.js runs them untraced and under every tracer).
 *
 *   workload MODE N [--out FILE]
 *
 * MODE:
 *   pair      N times: p = malloc(64); free(p).
 *   batch     N pairs in batches of 4,096 live blocks: 4,096 mallocs of 64 bytes, then their frees.
 *   mixed     N times: malloc(a), realloc to b, free; a, b pseudo-random in 16..4,111 bytes.
 *             A "pair" here is one such round (1 malloc + 1 realloc + 1 free).
 *   threads   2 threads, each N/2 of `pair` at once; ns/pair is each thread's time per pair
 *             (wall time / (N/2)), so it compares with `pair` (equal if nothing contends).
 *   memalign  N times: posix_memalign(&p, 64, 64); free(p) (not in the table: placement check).
 *   hold      malloc(32) N times, keep them, write "ready" to FILE, then wait for SIGTERM.
 *   heap      N blocks making 1 GiB together, filled, each pointing at the one before (the last
 *             from a global: all reachable), write "ready" to FILE, then wait for SIGTERM.
 *   waiters   N threads, each holding a block from its stack and waiting; "ready", SIGTERM.
 *
 * Only the loop is timed (CLOCK_MONOTONIC); after a short untimed warm-up. The result goes to FILE
 * (or stdout) as one line: `nsPerPair=<ns> pairs=<N> ns=<total> cpuNsPerPair=<ns>`, the last from
 * the process's CPU time (the probes' kernel time in it, waits for a CPU not: steadier on a busy
 * machine). Built by CMake (bench section)
 * with -fno-builtin, so every call in the source is a real call into libc. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BATCH 4096

static void *volatile sink;

static uint64_t cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "workload: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void pairs(long n)
{
	for (long i = 0; i < n; i++) {
		void *p = malloc(64);
		if (!p)
			die("malloc");
		sink = p;
		free(p);
	}
}

static void batches(long n)
{
	static void *live[BATCH];
	for (long done = 0; done < n;) {
		long k = n - done < BATCH ? n - done : BATCH;
		for (long i = 0; i < k; i++) {
			live[i] = malloc(64);
			if (!live[i])
				die("malloc");
		}
		for (long i = 0; i < k; i++)
			free(live[i]);
		done += k;
	}
}

static void mixed(long n)
{
	uint32_t x = 2463534242u; /* xorshift32: the same sizes every run */
	for (long i = 0; i < n; i++) {
		size_t a, b;
		void *p, *q;

		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		a = 16 + (x & 4095);
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		b = 16 + (x & 4095);
		p = malloc(a);
		if (!p)
			die("malloc");
		memset(p, 1, a < 64 ? a : 64);
		q = realloc(p, b);
		if (!q)
			die("realloc");
		sink = q;
		free(q);
	}
}

static void memaligns(long n)
{
	for (long i = 0; i < n; i++) {
		void *p;
		if (posix_memalign(&p, 64, 64))
			die("posix_memalign");
		sink = p;
		free(p);
	}
}

static void *thread_main(void *arg)
{
	pairs(*(long *)arg);
	return NULL;
}

static volatile sig_atomic_t stop;
static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

/* EBPF_LEAK_BENCH_CPU=N (bench/run.js sets it): the single-threaded workloads run on CPU N, in
 * every config alike. Probes run in the traced thread, so they move with it; the tracer's own
 * threads then mostly keep to the other CPUs instead of trading places with the workload, which
 * made runs of one config differ by 20%. `threads` stays unpinned: its threads run in parallel. */
static void pin_to_bench_cpu(const char *mode)
{
	const char *cpu = getenv("EBPF_LEAK_BENCH_CPU");
	cpu_set_t set;

	if (!cpu || !*cpu || strcmp(mode, "threads") == 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(atoi(cpu), &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		perror("workload: sched_setaffinity");
}

static void *volatile heap_head;

static void *waiter(void *arg)
{
	void *volatile mine = malloc(128);

	(void)arg;
	memset(mine, 0x5a, 128);
	for (;;)
		pause();
	return NULL;
}

static void write_ready(const char *out, long n, uint64_t ns)
{
	FILE *f = out ? fopen(out, "w") : stdout;

	if (!f)
		die(out);
	fprintf(f, "ready blocks=%ld ns=%llu\n", n, (unsigned long long)ns);
	if (out)
		fclose(f);
	else
		fflush(f);
}

int main(int argc, char **argv)
{
	const char *mode, *out = NULL;
	uint64_t t0, t1, cpu0, cpu1;
	long n;
	FILE *f;

	if (argc < 3) {
		fprintf(stderr, "usage: workload pair|batch|mixed|threads|memalign|hold|heap|waiters N [--out FILE]\n");
		return 2;
	}
	mode = argv[1];
	n = strtol(argv[2], NULL, 10);
	if (argc >= 5 && strcmp(argv[3], "--out") == 0)
		out = argv[4];
	if (n <= 0) {
		fprintf(stderr, "workload: N must be positive\n");
		return 2;
	}
	pin_to_bench_cpu(mode);

	if (strcmp(mode, "heap") == 0 || strcmp(mode, "waiters") == 0) {
		struct sigaction sa = { .sa_handler = on_term };
		size_t size = ((size_t)1 << 30) / (size_t)n / 8 * 8;

		sigaction(SIGTERM, &sa, NULL);
		t0 = now_ns();
		if (strcmp(mode, "heap") == 0) {
			for (long i = 0; i < n; i++) {
				void **b = malloc(size < 8 ? 8 : size);

				if (!b)
					die("malloc");
				memset(b, 0x5a, size);
				b[0] = heap_head;
				heap_head = b;
			}
		} else {
			for (long i = 0; i < n; i++) {
				pthread_t t;

				if (pthread_create(&t, NULL, waiter, NULL))
					die("pthread_create");
			}
		}
		write_ready(out, n, now_ns() - t0);
		while (!stop)
			pause();
		return 0;
	}

	if (strcmp(mode, "hold") == 0) {
		void **blocks = malloc(sizeof(void *) * (size_t)n);
		struct sigaction sa = { .sa_handler = on_term };

		if (!blocks)
			die("malloc");
		sigaction(SIGTERM, &sa, NULL);
		t0 = now_ns();
		for (long i = 0; i < n; i++) {
			blocks[i] = malloc(32);
			if (!blocks[i])
				die("malloc");
		}
		t1 = now_ns();
		f = out ? fopen(out, "w") : stdout;
		if (!f)
			die(out);
		fprintf(f, "ready blocks=%ld ns=%llu\n", n, (unsigned long long)(t1 - t0));
		if (out)
			fclose(f);
		else
			fflush(f);
		while (!stop)
			pause();
		return 0;
	}

	/* Warm-up: the allocator's first calls (arena set-up, tcache) are not what is measured. */
	pairs(1000);

	cpu0 = cpu_ns();
	t0 = now_ns();
	if (strcmp(mode, "pair") == 0) {
		pairs(n);
	} else if (strcmp(mode, "batch") == 0) {
		batches(n);
	} else if (strcmp(mode, "mixed") == 0) {
		mixed(n);
	} else if (strcmp(mode, "memalign") == 0) {
		memaligns(n);
	} else if (strcmp(mode, "threads") == 0) {
		pthread_t th[2];
		long half = n / 2;
		for (int i = 0; i < 2; i++)
			if (pthread_create(&th[i], NULL, thread_main, &half))
				die("pthread_create");
		for (int i = 0; i < 2; i++)
			pthread_join(th[i], NULL);
		t1 = now_ns();
		n = half;
		goto report;
	} else {
		fprintf(stderr, "workload: unknown mode %s\n", mode);
		return 2;
	}
	t1 = now_ns();
report:
	cpu1 = cpu_ns();
	f = out ? fopen(out, "w") : stdout;
	if (!f)
		die(out);
	fprintf(f, "nsPerPair=%.3f pairs=%ld ns=%llu cpuNsPerPair=%.3f\n", (double)(t1 - t0) / (double)n, n,
		(unsigned long long)(t1 - t0), (double)(cpu1 - cpu0) / (double)n);
	if (out)
		fclose(f);
	return 0;
}
