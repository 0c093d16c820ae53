/* ebpf-leak-exec PATH ARGV0 [ARGS...]: the `command` target's first process.
 *
 * The tracer spawns us with a pipe on fd 3 and holds us in read() until its probes are attached,
 * then we exec PATH. Nothing here allocates after the tracer starts counting (and the BPF side
 * only counts after the exec anyway), so the report covers exactly the program.
 *
 * EBPF_LEAK_EXEC_USER=UID:GID:GROUP,GROUP,... in our environment: the program runs as that user
 * with those supplementary groups; the variable itself is not passed on. The addon looked the user
 * up (native/process/run_as_user.h) and set HOME, USER and LOGNAME: a static executable cannot load
 * glibc's name service modules, so nothing here asks the user database. The tracer runs as root,
 * and `sudo ebpf-leak run -- CMD` means CMD as the one who typed it. */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The kernel's NGROUPS_MAX. Static: no allocation before exec. */
static gid_t groups[65536];

static void cannot_switch(unsigned long uid, unsigned long gid, const char *what)
{
	fprintf(stderr, "ebpf-leak: cannot run the program as uid %lu gid %lu: %s: %s\n", uid, gid, what,
		strerror(errno));
	_exit(126);
}

static int parse_id(const char **spec, char stop, unsigned long *id)
{
	char *end;

	errno = 0;
	*id = strtoul(*spec, &end, 10);
	if (errno || end == *spec || *end != stop || *id > (gid_t)-2)
		return -1;
	*spec = end + (stop != '\0');
	return 0;
}

static void become_user(const char *spec)
{
	const char *p = spec;
	unsigned long uid, gid, group;
	size_t count = 0;

	if (parse_id(&p, ':', &uid) || parse_id(&p, ':', &gid))
		goto bad;
	for (;;) {
		const char *comma = strchr(p, ',');
		if (count == sizeof groups / sizeof groups[0] || parse_id(&p, comma ? ',' : '\0', &group))
			goto bad;
		groups[count++] = (gid_t)group;
		if (!comma)
			break;
	}
	if (setgroups(count, groups))
		cannot_switch(uid, gid, "setgroups");
	if (setgid((gid_t)gid))
		cannot_switch(uid, gid, "setgid");
	if (setuid((uid_t)uid))
		cannot_switch(uid, gid, "setuid");
	if (uid != 0 && (setuid(0) == 0 || geteuid() == 0)) {
		errno = EPERM;
		cannot_switch(uid, gid, "root privileges are still held");
	}
	return;
bad:
	fprintf(stderr, "ebpf-leak: EBPF_LEAK_EXEC_USER must be UID:GID:GROUP,... (got %s)\n", spec);
	_exit(126);
}

int main(int argc, char **argv)
{
	char go;
	ssize_t n;
	const char *user;

	if (argc < 3) {
		fprintf(stderr, "usage: ebpf-leak-exec PATH ARGV0 [ARGS...] (run by ebpf-leak)\n");
		return 127;
	}
	do
		n = read(3, &go, 1);
	while (n < 0 && errno == EINTR);
	close(3);
	if (n != 1) /* the tracer went away without attaching: do not run untraced */
		_exit(125);
	user = getenv("EBPF_LEAK_EXEC_USER");
	if (user) {
		/* unsetenv() only takes the pointer out of environ: the string, on our initial stack, stays. */
		unsetenv("EBPF_LEAK_EXEC_USER");
		become_user(user);
	}
	execv(argv[1], argv + 2);
	fprintf(stderr, "ebpf-leak: cannot execute %s: %s\n", argv[1], strerror(errno));
	_exit(errno == ENOENT ? 127 : 126);
}
