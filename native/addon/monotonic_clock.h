#pragma once
// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns(), so times taken here and in the BPF
// program (block and event times, scan pauses) agree.
#include <cstdint>
#include <ctime>

namespace ebpf_leak {

inline uint64_t MonotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace ebpf_leak
