// Stands in for glibc's `stderr` inside our copy of libbpf.a (see CMakeLists.txt): Debian's
// archive is not position independent, so it may only reference data defined in this object.
#include <cstdio>

extern "C" {
__attribute__((visibility("hidden"))) FILE* ebpf_leak_libbpf_stderr = stderr;
}
