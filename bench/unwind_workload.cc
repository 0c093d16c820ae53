// The unwinder's bench workload (bench/unwind.mjs): N times `new` then `delete` of a 56-byte
// object, DEPTH calls below the thread's start, timed (CLOCK_MONOTONIC) after an untimed warm-up,
// in THREADS threads at once. Prints `nsPerPair=<ns> pairs=<N> threads=<T>`. Built twice by bench/unwind.mjs: -O2 -fomit-frame-pointer (the
// stacks need the CFI walk) and -O2 -fno-omit-frame-pointer.
#include <pthread.h>
#include <time.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

struct Widget {
  std::int64_t a[7];
};

void* volatile sink;
volatile int depth_guard;

static std::uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

__attribute__((noinline)) static void pairs(long n) {
  for (long i = 0; i < n; i++) {
    Widget* w = new Widget;
    sink = w;
    delete w;
  }
}

__attribute__((noinline)) static std::uint64_t below(int depth, long n) {
  if (depth > 0) {
    std::uint64_t r = below(depth - 1, n);
    depth_guard = depth;  // not a tail call
    return r;
  }
  pairs(n / 10);  // warm-up
  std::uint64_t t0 = now_ns();
  pairs(n);
  return now_ns() - t0;
}

struct Job {
  long n;
  int depth;
  std::uint64_t ns;
};

static void* run(void* arg) {
  Job* job = static_cast<Job*>(arg);
  job->ns = below(job->depth, job->n);
  return nullptr;
}

// THREADS (argv[3], default 1) threads each do N pairs from the same call site at once; ns/pair
// is each thread's time per pair (the slowest thread's), comparable with one thread's.
int main(int argc, char** argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000000;
  int depth = argc > 2 ? atoi(argv[2]) : 0;
  int threads = argc > 3 ? atoi(argv[3]) : 1;
  if (threads < 1 || threads > 64) threads = 1;
  Job jobs[64];
  pthread_t tids[64];
  for (int t = 0; t < threads; t++) {
    jobs[t] = {n, depth, 0};
    pthread_create(&tids[t], nullptr, run, &jobs[t]);
  }
  std::uint64_t ns = 0;
  for (int t = 0; t < threads; t++) {
    pthread_join(tids[t], nullptr);
    if (jobs[t].ns > ns) ns = jobs[t].ns;
  }
  printf("nsPerPair=%.1f pairs=%ld threads=%d\n", static_cast<double>(ns) / n, n, threads);
  return 0;
}
