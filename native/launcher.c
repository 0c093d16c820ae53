/* ebpf-leak-exec PATH ARGV0 [ARGS...]: the `command` target's first process.
 *
 * The tracer spawns us with a pipe on fd 3 and holds us in read() until its probes are attached,
 * then we exec PATH. Nothing here allocates after the tracer starts counting (and the BPF side
 * only counts after the exec anyway), so the report covers exactly the program. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char go;
	ssize_t n;

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
	execv(argv[1], argv + 2);
	fprintf(stderr, "ebpf-leak: cannot execute %s: %s\n", argv[1], strerror(errno));
	_exit(errno == ENOENT ? 127 : 126);
}
