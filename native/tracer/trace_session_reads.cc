// TraceSession's reads of the BPF object's maps: the outstanding blocks and counters, stacks,
// modules, heap errors, per-stack totals, and the small values of its .bss.
#include "tracer/trace_session.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "abi/leak.h"
#include "abi/unwind_types.h"
#include "addon/page_buffer.h"
#include "leak.skel.h"
#include "scan/scan_session.h"
#include "unwind/unwinder.h"

namespace ebpf_leak {

bool TraceSession::ReadCounters(std::vector<uint8_t>* out) {
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0 || skel_ == nullptr) return false;
  // struct leak_counters is all __u64: read the per-CPU copies as words, which is what they are
  // (summing through a cast struct pointer would break strict aliasing).
  constexpr size_t kWords = sizeof(leak_counters) / sizeof(uint64_t);
  std::vector<uint64_t> per_cpu(static_cast<size_t>(ncpu) * kWords);
  uint32_t key = 0;
  int fd = bpf_map__fd(skel_->maps.counters);
  if (config_.image_keys) {  // the current image's
    key = CurrentImage();
    fd = bpf_map__fd(skel_->maps.process_counters);
  }
  if (bpf_map_lookup_elem(fd, &key, per_cpu.data())) return false;
  std::vector<uint64_t> sum(kWords, 0);
  for (size_t cpu = 0; cpu < static_cast<size_t>(ncpu); cpu++)
    for (size_t i = 0; i < kWords; i++) sum[i] += per_cpu[cpu * kWords + i];
  out->resize(sizeof(leak_counters));
  memcpy(out->data(), sum.data(), sizeof(leak_counters));
  return true;
}

bool TraceSession::DoSnapshot(bool timestamps, PageBuffer* entries, std::vector<uint8_t>* counters,
                        NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!Attached(error)) return false;
  ThreadIgnore ignore(this);
  SyncImages();
  // Counters first: a block allocated between the two reads then shows in the map but not yet
  // in the totals, never the other way round.
  if (!ReadCounters(counters)) {
    *error = {"ELEAK_BPF", "cannot read the counters map: " + ErrnoText(errno), errno};
    return false;
  }
  if (int e = allocs_table_.Read(timestamps, entries)) {
    *error = {"ELEAK_BPF", "cannot read the table of outstanding blocks: " + ErrnoText(e), e};
    return false;
  }
  return true;
}

// The heap errors recorded: the count seen (u64), then the leak_heap_error records that have a
// slot (the first LEAK_MAX_HEAP_ERRORS).
bool TraceSession::DoReadHeapErrors(std::vector<uint8_t>* out, NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!Attached(error)) return false;
  ThreadIgnore ignore(this);
  uint64_t count = __atomic_load_n(&skel_->bss->heap_error_count, __ATOMIC_ACQUIRE);
  uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(count, LEAK_MAX_HEAP_ERRORS));
  out->resize(sizeof(uint64_t) + n * sizeof(leak_heap_error));
  memcpy(out->data(), &count, sizeof(count));
  int fd = bpf_map__fd(skel_->maps.heap_errors);
  for (uint32_t i = 0; i < n; i++) {
    if (bpf_map_lookup_elem(fd, &i, out->data() + sizeof(uint64_t) + i * sizeof(leak_heap_error))) {
      int e = errno;
      *error = {"ELEAK_BPF", "cannot read the heap errors: " + ErrnoText(e), e};
      return false;
    }
  }
  return true;
}

bool TraceSession::DoReadModules(std::vector<uint8_t>* modules, NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!Attached(error)) return false;
  ThreadIgnore ignore(this);
  return DumpHashMap(bpf_map__fd(skel_->maps.modules), sizeof(uint64_t), sizeof(leak_module),
                     modules, error);
}

// Appends every key+value of a hash map to `out`, with batch lookups (a few system calls for a
// million entries). The map may change meanwhile; each bucket is read consistently.
bool TraceSession::DumpHashMap(int fd, size_t key_size, size_t value_size, std::vector<uint8_t>* out,
                         NativeError* error) {
  // Batches of at most 64 KiB, under glibc's mmap threshold: 16,384 modules (13 MB) a call were
  // left free in each worker thread's arena, and raised the threshold so that they stayed.
  uint32_t chunk = static_cast<uint32_t>(std::clamp<size_t>((64u << 10) / (key_size + value_size), 64, 16384));
  std::vector<uint8_t> keys, values;
  uint64_t in_token = 0, out_token = 0;
  bool first = true;
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  for (;;) {
    keys.resize(chunk * key_size);
    values.resize(chunk * value_size);
    uint32_t count = chunk;
    int err = bpf_map_lookup_batch(fd, first ? nullptr : &in_token, &out_token, keys.data(),
                                   values.data(), &count, &opts);
    int e = err ? errno : 0;
    if (e == ENOSPC && count == 0) {  // one hash bucket holds more than `chunk` entries
      chunk *= 2;
      continue;
    }
    size_t old = out->size();
    out->resize(old + count * (key_size + value_size));
    uint8_t* dst = out->data() + old;
    for (uint32_t i = 0; i < count; i++) {
      memcpy(dst, keys.data() + i * key_size, key_size);
      memcpy(dst + key_size, values.data() + i * value_size, value_size);
      dst += key_size + value_size;
    }
    if (e == ENOENT) return true;
    if (e) {
      *error = {"ELEAK_BPF", "cannot read a BPF map: " + ErrnoText(e), e};
      return false;
    }
    in_token = out_token;
    first = false;
  }
}

bool TraceSession::DoReadStacks(const std::vector<int64_t>& ids,
                          std::vector<std::vector<uint64_t>>* stacks, NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!Attached(error)) return false;
  ThreadIgnore ignore(this);
  int fd = bpf_map__fd(skel_->maps.stack_traces);
  int overflow_fd = bpf_map__fd(skel_->maps.overflow_stacks);
  std::vector<uint64_t> buf(config_.stacks ? config_.stack_depth : 1);
  for (int64_t id : ids) {
    std::vector<uint64_t> frames;
    if (unwind_ && unwind_->ReadStack(id, &frames)) {  // a CFI-walked stack (bpf/unwind.bpf.h)
      stacks->push_back(std::move(frames));
      continue;
    }
    uint32_t key = static_cast<uint32_t>(id);
    uint64_t overflow_key = static_cast<uint64_t>(id);
    bool found = false;
    if (id >= 0 && (overflow_key & LEAK_OVERFLOW_STACK_TAG))
      found = bpf_map_lookup_elem(overflow_fd, &overflow_key, buf.data()) == 0;
    else if (id >= 0)
      found = bpf_map_lookup_elem(fd, &key, buf.data()) == 0;
    if (found) {
      for (uint64_t ip : buf) {
        if (ip == 0) break;
        frames.push_back(ip);
      }
    }
    stacks->push_back(std::move(frames));
  }
  return true;
}

// Summed counters: one small map read.
bool TraceSession::Counters(std::vector<uint8_t>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  return ReadCounters(out);
}

bool TraceSession::ReadStackTotals(std::vector<uint8_t>* out, NativeError* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr) {
    *error = {};
    return false;
  }
  ThreadIgnore ignore(this);
  return DumpHashMap(bpf_map__fd(skel_->maps.stack_totals), sizeof(int64_t), sizeof(leak_stack_total),
                     out, error);
}

bool TraceSession::WithUnwinder(const std::function<void(Unwinder&)>& fn) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr || !unwind_) return false;
  fn(*unwind_);
  return true;
}

bool TraceSession::ExitStatus(uint32_t* status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr || !skel_->bss->exit_status_seen) return false;
  *status = skel_->bss->exit_status;
  return true;
}

void TraceSession::SetMark(uint64_t mark) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ != nullptr) skel_->bss->mark = mark;
}

std::unique_ptr<ScanOutcome> TraceSession::TakeExitScan(std::string* reason) {
  std::lock_guard<std::mutex> lock(scan_mu_);
  *reason = hold_error_.empty() ? "the exit scan is off" : "it could not be held at its exit: " + hold_error_;
  if (!scan_) return nullptr;
  std::unique_ptr<ScanOutcome> outcome = scan_->TakeExitOutcome();
  if (!outcome) *reason = scan_->NotScannedReason();
  if (!outcome && !hold_error_.empty()) *reason = "it could not be held at its exit: " + hold_error_;
  return outcome;
}

}  // namespace ebpf_leak
