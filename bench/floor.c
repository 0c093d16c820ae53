/* ebpf-leak-floor: runs a command with empty BPF programs on given offsets of one file.
 *
 *   ebpf-leak-floor --path FILE [--entry OFF,...] [--return OFF,...] [--single]
 *                   [--session-keep OFF,... | --session-decline OFF,...] -- CMD [ARGS...]
 *
 * OFF are file offsets (hex with 0x, or decimal). The command is forked and held before its exec
 * until the probes are attached, for its pid only, the way ebpf-leak attaches its own: one
 * multi-uprobe link for the entry probes and one for the return probes (kernel >= 6.6; --single
 * attaches one classic uprobe per offset instead). --session-keep and --session-decline attach an
 * empty uprobe-session program (kernel >= 6.13) whose entry keeps, or declines, the return of each
 * call. Exits with the command's status. The bench
 * (bench/run.js) uses it for the `floor` and `entry-floor` rows. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "floor.skel.h"
#include "tracer/uprobe_multi.h"

#define MAX_OFFSETS 64
static int parse_offsets(const char *list, uint64_t *out)
{
	char *copy = strdup(list), *save = NULL, *tok;
	int n = 0;

	for (tok = strtok_r(copy, ",", &save); tok && n < MAX_OFFSETS; tok = strtok_r(NULL, ",", &save))
		out[n++] = strtoull(tok, NULL, 0);
	free(copy);
	return n;
}

static double ms_since(const struct timespec *t0)
{
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

int main(int argc, char **argv)
{
	uint64_t entry[MAX_OFFSETS], ret[MAX_OFFSETS], session[MAX_OFFSETS];
	int n_entry = 0, n_ret = 0, n_session = 0, decline = 0, single = 0, verbose = 0, go[2], status, i;
	const char *path = NULL;
	char **cmd = NULL;
	struct floor_bpf *skel;
	struct timespec t0;
	pid_t pid;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--path") == 0 && i + 1 < argc)
			path = argv[++i];
		else if (strcmp(argv[i], "--entry") == 0 && i + 1 < argc)
			n_entry = parse_offsets(argv[++i], entry);
		else if (strcmp(argv[i], "--return") == 0 && i + 1 < argc)
			n_ret = parse_offsets(argv[++i], ret);
		else if ((strcmp(argv[i], "--session-keep") == 0 || strcmp(argv[i], "--session-decline") == 0) &&
			 i + 1 < argc) {
			decline = strcmp(argv[i], "--session-decline") == 0;
			n_session = parse_offsets(argv[++i], session);
		} else if (strcmp(argv[i], "--single") == 0)
			single = 1;
		else if (strcmp(argv[i], "--verbose") == 0)
			verbose = 1;
		else if (strcmp(argv[i], "--") == 0 && i + 1 < argc) {
			cmd = argv + i + 1;
			break;
		} else
			break;
	}
	if (!path || !cmd) {
		fprintf(stderr, "usage: ebpf-leak-floor --path FILE [--entry OFF,...] [--return OFF,...] "
				"[--single] [--verbose] -- CMD [ARGS...]\n");
		return 2;
	}

	if (pipe(go))
		return perror("pipe"), 1;
	pid = fork();
	if (pid < 0)
		return perror("fork"), 1;
	if (pid == 0) {
		char c;
		ssize_t n;

		close(go[1]);
		do
			n = read(go[0], &c, 1);
		while (n < 0 && errno == EINTR);
		if (n != 1)
			_exit(125); /* not attached: do not run untraced */
		close(go[0]);
		execvp(cmd[0], cmd);
		fprintf(stderr, "ebpf-leak-floor: cannot run %s: %s\n", cmd[0], strerror(errno));
		_exit(127);
	}
	close(go[0]);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	skel = floor_bpf__open();
	if (!skel)
		return perror("floor_bpf__open"), 1;
	if (!single) {
		bpf_program__set_expected_attach_type(skel->progs.floor_entry, LEAK_BPF_TRACE_UPROBE_MULTI);
		bpf_program__set_expected_attach_type(skel->progs.floor_exit, LEAK_BPF_TRACE_UPROBE_MULTI);
	}
	bpf_program__set_expected_attach_type(skel->progs.floor_session_keep, LEAK_BPF_TRACE_UPROBE_SESSION);
	bpf_program__set_expected_attach_type(skel->progs.floor_session_decline, LEAK_BPF_TRACE_UPROBE_SESSION);
	bpf_program__set_autoload(skel->progs.floor_session_keep, n_session > 0 && !decline);
	bpf_program__set_autoload(skel->progs.floor_session_decline, n_session > 0 && decline);
	if (floor_bpf__load(skel)) {
		fprintf(stderr, "ebpf-leak-floor: cannot load the BPF programs\n");
		return 1;
	}
	for (int r = 0; r < 2; r++) {
		const uint64_t *offs = r ? ret : entry;
		int n = r ? n_ret : n_entry;
		struct bpf_program *prog = r ? skel->progs.floor_exit : skel->progs.floor_entry;

		if (n == 0)
			continue;
		if (!single) {
			if (create_uprobe_multi_link(bpf_program__fd(prog), path, offs, NULL, (uint32_t)n, r, pid) < 0) {
				fprintf(stderr, "ebpf-leak-floor: cannot attach %s: %s\n",
					r ? "uretprobes" : "uprobes", strerror(errno));
				kill(pid, SIGKILL);
				return 1;
			}
			continue;
		}
		for (int k = 0; k < n; k++) {
			LIBBPF_OPTS(bpf_uprobe_opts, opts, .retprobe = r);
			if (!bpf_program__attach_uprobe_opts(prog, pid, path, offs[k], &opts)) {
				fprintf(stderr, "ebpf-leak-floor: cannot attach at 0x%llx: %s\n",
					(unsigned long long)offs[k], strerror(errno));
				kill(pid, SIGKILL);
				return 1;
			}
		}
	}
	if (n_session > 0) {
		struct bpf_program *prog = decline ? skel->progs.floor_session_decline : skel->progs.floor_session_keep;

		if (create_uprobe_session_link(bpf_program__fd(prog), path, session, NULL, (uint32_t)n_session, pid) < 0) {
			fprintf(stderr, "ebpf-leak-floor: cannot attach the session: %s\n", strerror(errno));
			kill(pid, SIGKILL);
			return 1;
		}
	}
	if (verbose)
		fprintf(stderr, "ebpf-leak-floor: %d entry and %d return probes on %s attached in %.1f ms\n",
			n_entry, n_ret, path, ms_since(&t0));
	if (write(go[1], "g", 1) != 1)
		return perror("write"), 1;
	close(go[1]);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return perror("waitpid"), 1;
	floor_bpf__destroy(skel);
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}
