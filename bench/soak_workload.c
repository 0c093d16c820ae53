/* The soak bench's target (bench/soak.js): `soak_workload SECONDS [THREADS]`. THREADS threads
 * (default 2) each keep a pool of 20,000 live blocks and, for SECONDS, replace a pseudo-random
 * one per round: freed, then allocated anew from one of 16 call sites (so the tracer sees 16
 * stacks), one round in four through realloc. The live set stays level, so whatever the
 * tracer's memory does is the tracer's. Prints the rounds made, in total, at the end. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define POOL 20000
#define SITES 16

static double seconds;
static long rounds_total;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

#define SITE(n) \
	static __attribute__((noinline)) void *site##n(size_t size) { return malloc(size); }
SITE(0) SITE(1) SITE(2) SITE(3) SITE(4) SITE(5) SITE(6) SITE(7)
SITE(8) SITE(9) SITE(10) SITE(11) SITE(12) SITE(13) SITE(14) SITE(15)
static void *(*const sites[SITES])(size_t) = {
	site0, site1, site2, site3, site4, site5, site6, site7,
	site8, site9, site10, site11, site12, site13, site14, site15,
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *work(void *arg)
{
	void **pool = calloc(POOL, sizeof(void *));
	uint32_t x = 0x9e3779b9u * (uint32_t)((uintptr_t)arg + 1);
	double end = now() + seconds;
	long rounds = 0;

	if (!pool)
		abort();
	while ((rounds & 1023) || now() < end) {
		unsigned i;
		size_t size;

		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		i = x % POOL;
		size = 16 + (x >> 8) % 4096;
		if ((x & 3) == 0 && pool[i]) {
			void *q = realloc(pool[i], size);

			if (!q)
				abort();
			pool[i] = q;
		} else {
			free(pool[i]);
			pool[i] = sites[(x >> 4) % SITES](size);
			if (!pool[i])
				abort();
		}
		rounds++;
	}
	for (unsigned i = 0; i < POOL; i++)
		free(pool[i]);
	free(pool);
	pthread_mutex_lock(&lock);
	rounds_total += rounds;
	pthread_mutex_unlock(&lock);
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = argc > 2 ? atoi(argv[2]) : 2;
	pthread_t t[64];

	seconds = argc > 1 ? atof(argv[1]) : 10;
	if (threads < 1 || threads > 64)
		return 2;
	for (int i = 0; i < threads; i++)
		if (pthread_create(&t[i], NULL, work, (void *)(uintptr_t)i))
			return 1;
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	printf("%ld\n", rounds_total);
	return 0;
}
