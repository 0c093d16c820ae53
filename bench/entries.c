/* ebpf-leak-entries: how threads named COMM enter the kernel while CMD runs.
 *
 *   ebpf-leak-entries COMM -- CMD [ARGS...]
 *
 * CMD is anything that ends up running a process named COMM (15 characters at most), e.g.
 * `node dist/cli.js run -- build/bench/ebpf-leak-workload pair 100000 --out F`. Prints:
 *   syscalls, uretprobe_syscalls, uprobe_syscalls   counted at the raw_syscalls tracepoint
 *   PROGRAM runs N ns/run T                         each uprobe BPF program that ran meanwhile
 *                                                   (kernel.bpf_stats: runs are breakpoint hits
 *                                                   for entry programs, returns for the others)
 *   cpu_ms                                          user + system CPU time of CMD and the
 *                                                   processes it waited for
 * Program stats are polled every 20 ms while CMD runs (a tracer unloads its programs at exit);
 * programs loaded before CMD started are other tracers', left out. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "entries.skel.h"

#define MAX_PROGS 256
struct prog_stat {
	__u32 id;
	char name[BPF_OBJ_NAME_LEN];
	__u64 runs, ns, runs0, ns0;
	bool baseline;
};
static struct prog_stat progs[MAX_PROGS];
static int n_progs;
static bool baseline_taken;

/* Uprobe programs now loaded: their run counts, the first sighting kept as the baseline. */
static void poll_programs(void)
{
	__u32 id = 0;

	while (bpf_prog_get_next_id(id, &id) == 0) {
		struct bpf_prog_info info = {};
		__u32 len = sizeof(info);
		int fd = bpf_prog_get_fd_by_id(id), i;

		if (fd < 0)
			continue;
		if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && info.type == BPF_PROG_TYPE_KPROBE) {
			for (i = 0; i < n_progs && progs[i].id != id; i++)
				;
			if (i == n_progs && n_progs < MAX_PROGS && !baseline_taken) {
				/* Loaded before CMD started: another tracer's, left out. */
				n_progs++;
				progs[i].id = id;
				progs[i].baseline = true;
			} else if (i == n_progs && n_progs < MAX_PROGS) {
				n_progs++;
				progs[i].id = id;
				memcpy(progs[i].name, info.name, sizeof(info.name));
				progs[i].runs0 = info.run_cnt;
				progs[i].ns0 = info.run_time_ns;
			}
			if (i < n_progs) {
				progs[i].runs = info.run_cnt;
				progs[i].ns = info.run_time_ns;
			}
		}
		close(fd);
	}
}

int main(int argc, char **argv)
{
	static const char *names[] = { "syscalls", "uretprobe_syscalls", "uprobe_syscalls" };
	struct timespec tick = { 0, 20 * 1000 * 1000 };
	int status, stats_fd, ncpu = libbpf_num_possible_cpus();
	struct entries_bpf *skel;
	pid_t pid;

	if (argc < 4 || strcmp(argv[2], "--") != 0) {
		fprintf(stderr, "usage: ebpf-leak-entries COMM -- CMD [ARGS...]\n");
		return 2;
	}
	skel = entries_bpf__open();
	if (!skel)
		return perror("entries_bpf__open"), 1;
	strncpy((char *)skel->rodata->comm, argv[1], 15);
	if (entries_bpf__load(skel) || entries_bpf__attach(skel)) {
		fprintf(stderr, "ebpf-leak-entries: cannot load or attach the counter\n");
		return 1;
	}
	stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
	if (stats_fd < 0)
		fprintf(stderr, "ebpf-leak-entries: no BPF run-time stats (%s)\n", strerror(errno));
	poll_programs();
	baseline_taken = true;
	pid = fork();
	if (pid == 0) {
		execvp(argv[3], argv + 3);
		perror("execvp");
		_exit(127);
	}
	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			return perror("waitpid"), 1;
		poll_programs();
		nanosleep(&tick, NULL);
	}
	for (__u32 k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
		__u64 v[512] = {}, sum = 0;

		bpf_map_lookup_elem(bpf_map__fd(skel->maps.counts), &k, v);
		for (int c = 0; c < ncpu && c < 512; c++)
			sum += v[c];
		printf("%s %llu\n", names[k], (unsigned long long)sum);
	}
	for (int i = 0; i < n_progs; i++) {
		__u64 runs = progs[i].runs - progs[i].runs0, ns = progs[i].ns - progs[i].ns0;

		if (runs && !progs[i].baseline)
			printf("%s runs %llu ns/run %.1f\n", progs[i].name, (unsigned long long)runs,
			       (double)ns / (double)runs);
	}
	{
		/* CMD and everything it waited for (the traced program): user + system. */
		struct rusage ru;

		getrusage(RUSAGE_CHILDREN, &ru);
		printf("cpu_ms %.1f\n", (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
					       (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3);
	}
	entries_bpf__destroy(skel);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
