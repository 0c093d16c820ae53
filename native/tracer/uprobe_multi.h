/* Multi-uprobe links (kernel >= 6.6): one BPF link attaches a program at many offsets of one
 * file. Debian 12's libbpf (1.1) predates them, so the link is created with the bpf() syscall.
 * Plain C, shared by the addon and bench/floor.c. */
#ifndef EBPF_LEAK_UPROBE_MULTI_H
#define EBPF_LEAK_UPROBE_MULTI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The kernel's attach type for these links (enum bpf_attach_type, ABI-stable); programs loaded
 * for them must declare it. */
#define LEAK_BPF_TRACE_UPROBE_MULTI 48
/* Uprobe sessions (kernel >= 6.13): one program runs at the entry and, unless the entry returned
 * nonzero, at the return of the same call. */
#define LEAK_BPF_TRACE_UPROBE_SESSION 57

/* Returns the link's fd, or -errno. `cookies` may be NULL. `pid` limits the probes to that
 * process; `retprobe` makes them uretprobes. */
int create_uprobe_multi_link(int prog_fd, const char *path, const uint64_t *offsets,
			     const uint64_t *cookies, uint32_t count, int retprobe, int32_t pid);

/* The same for a session program (LEAK_BPF_TRACE_UPROBE_SESSION). */
int create_uprobe_session_link(int prog_fd, const char *path, const uint64_t *offsets,
			       const uint64_t *cookies, uint32_t count, int32_t pid);

#ifdef __cplusplus
}
#endif

#endif /* EBPF_LEAK_UPROBE_MULTI_H */
