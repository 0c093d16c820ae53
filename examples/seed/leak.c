/* The program from the article ebpf-leak started from: ten 8-byte mallocs, nine frees.
 *
 * The article slept 20 seconds so there was time to find the pid and start bpftrace on it.
 * `ebpf-leak run` starts the program already traced, so it needs no pause; give a number of
 * seconds as the first argument to try `ebpf-leak attach -p PID` instead. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <stdint.h>

int main(int argc, char **argv)
{
	printf("pid :%d\n", getpid());
	fflush(stdout);
	int64_t *ptr[10];
	if (argc > 1)
		sleep(atoi(argv[1]));
	for (int i = 0; i < 10; i++) {
		ptr[i] = (int64_t *)malloc(sizeof(int64_t));
	}

	for (int i = 0; i < 9; i++) {
		free(ptr[i]);
	}
	return 0;
}
