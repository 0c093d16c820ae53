/* ebpf-leak-exec PATH ARGV0 [ARGS...]: the `command` target's first process.
 *
 * The tracer spawns us with a pipe on fd 3 and holds us in read() until its probes are attached,
 * then we exec PATH. Nothing here allocates after the tracer starts counting (and the BPF side
 * only counts after the exec anyway), so the report covers exactly the program.
 *
 * EBPF_LEAK_EXEC_USER=UID:GID in our environment: the program runs as that user, with the
 * user's supplementary groups and HOME, USER and LOGNAME; the variable itself is not passed on.
 * The tracer runs as root, and `sudo ebpf-leak run -- CMD` means CMD as the one who typed it. */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void cannot_switch(unsigned long uid, unsigned long gid, const char *what)
{
	fprintf(stderr, "ebpf-leak: cannot run the program as uid %lu gid %lu: %s: %s\n", uid, gid, what,
		strerror(errno));
	_exit(126);
}

static void become_user(const char *spec)
{
	char *end;
	unsigned long uid, gid;
	struct passwd *pw;
	gid_t group;

	errno = 0;
	uid = strtoul(spec, &end, 10);
	if (errno || end == spec || *end != ':')
		goto bad;
	spec = end + 1;
	gid = strtoul(spec, &end, 10);
	if (errno || end == spec || *end != '\0')
		goto bad;
	group = (gid_t)gid;
	pw = getpwuid((uid_t)uid);
	if (pw) {
		if (initgroups(pw->pw_name, group))
			cannot_switch(uid, gid, "initgroups");
		setenv("HOME", pw->pw_dir, 1);
		setenv("USER", pw->pw_name, 1);
		setenv("LOGNAME", pw->pw_name, 1);
	} else if (setgroups(1, &group)) {
		cannot_switch(uid, gid, "setgroups");
	}
	if (setgid(group))
		cannot_switch(uid, gid, "setgid");
	if (setuid((uid_t)uid))
		cannot_switch(uid, gid, "setuid");
	if (uid != 0 && (setuid(0) == 0 || geteuid() == 0)) {
		errno = EPERM;
		cannot_switch(uid, gid, "root privileges are still held");
	}
	return;
bad:
	fprintf(stderr, "ebpf-leak: EBPF_LEAK_EXEC_USER must be UID:GID (got %s)\n", spec);
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
		char spec[64];
		snprintf(spec, sizeof spec, "%s", user);
		unsetenv("EBPF_LEAK_EXEC_USER");
		become_user(spec);
	}
	execv(argv[1], argv + 2);
	fprintf(stderr, "ebpf-leak: cannot execute %s: %s\n", argv[1], strerror(errno));
	_exit(errno == ENOENT ? 127 : 126);
}
