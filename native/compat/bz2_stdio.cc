// Stand in for glibc's standard streams inside our copy of Debian's libbz2.a (see
// cmake/portable.cmake), which is not position independent: in a shared object it may only
// reference data defined in this object. libdw decompresses through libbz2 and never uses the
// streams, but bzlib.o, which holds both, does.
#include <cstdio>

extern "C" {
__attribute__((visibility("hidden"))) FILE* ebpf_leak_bz2_stdin = stdin;
__attribute__((visibility("hidden"))) FILE* ebpf_leak_bz2_stdout = stdout;
__attribute__((visibility("hidden"))) FILE* ebpf_leak_bz2_stderr = stderr;
}
