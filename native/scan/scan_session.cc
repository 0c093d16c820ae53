#include "scan_session.h"

#include <time.h>

#include <cstring>

#include "leak.h"

namespace ebpf_leak {
namespace {

uint64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

template <typename T>
Napi::ArrayBuffer CopyToArrayBuffer(Napi::Env env, const std::vector<T>& v) {
  Napi::ArrayBuffer b = Napi::ArrayBuffer::New(env, v.size() * sizeof(T));
  if (!v.empty()) memcpy(b.Data(), v.data(), v.size() * sizeof(T));
  return b;
}

}  // namespace

Napi::Object ScanOutcome::ToJs(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  size_t n = result.kind.size();
  o.Set("entries", entries.TakeAsArrayBuffer(env));
  o.Set("kinds", Napi::Uint8Array::New(env, n, CopyToArrayBuffer(env, result.kind), 0));
  o.Set("heuristics", Napi::Uint8Array::New(env, n, CopyToArrayBuffer(env, result.heuristic), 0));
  std::vector<double> indirect(result.indirect.begin(), result.indirect.end());
  o.Set("indirect", Napi::Float64Array::New(env, n, CopyToArrayBuffer(env, indirect), 0));
  Napi::Object stats = Napi::Object::New(env);
  stats.Set("atExit", at_exit);
  stats.Set("pauseNs", static_cast<double>(pause_ns));
  stats.Set("scanNs", static_cast<double>(scan_ns));
  stats.Set("readNs", static_cast<double>(result.stats.read_ns));
  stats.Set("markNs", static_cast<double>(result.stats.mark_ns));
  stats.Set("rootBytes", static_cast<double>(result.stats.root_bytes));
  stats.Set("heapBytes", static_cast<double>(result.stats.heap_bytes));
  stats.Set("blocks", static_cast<double>(n));
  stats.Set("threads", result.stats.threads);
  stats.Set("threadsWithRegisters", result.stats.threads_with_regs);
  o.Set("stats", stats);
  return o;
}

ScanSession::ScanSession(pid_t pid, const ScanOptions& options, ReadBlocks read_blocks)
    : pid_(pid), options_(options), read_blocks_(std::move(read_blocks)) {}

ScanSession::~ScanSession() { Stop(); }

void ScanSession::Stop() {
  std::unique_ptr<StopWorld> follower;
  {
    std::lock_guard<std::mutex> lock(mu_);
    follower = std::move(follower_);
    if (follower) {
      stopped_reason_ = follower->not_held_reason();
      if (stopped_reason_.empty()) stopped_reason_ = follower->exit_held() ? "" : "tracing stopped before it exited";
    }
  }
  if (!follower) return;
  follower.reset();  // detaches, or joins a thread that is done
  std::lock_guard<std::mutex> lock(mu_);
  if (!exit_outcome_ && exit_error_.empty()) exit_error_ = stopped_reason_;
}

bool ScanSession::FollowForExit(std::string* error) {
  auto follower = StopWorld::Follow(
      pid_,
      [this](const HeldWorld& world) {
        auto out = std::make_unique<ScanOutcome>();
        out->at_exit = true;
        Scan(world, out.get());
        std::lock_guard<std::mutex> lock(mu_);
        if (out->result.kind.size() == out->entries.size() / sizeof(leak_block))
          exit_outcome_ = std::move(out);
        else
          exit_error_ = "the scan at exit failed: its memory could not be read";
      },
      error);
  if (!follower) return false;
  std::lock_guard<std::mutex> lock(mu_);
  follower_ = std::move(follower);
  following_ = true;
  return true;
}

void ScanSession::Scan(const HeldWorld& world, ScanOutcome* out) {
  uint64_t t0 = MonotonicNs();
  if (!read_blocks_(&out->entries)) return;
  size_t n = out->entries.size() / sizeof(leak_block);
  std::vector<ScanBlock> blocks(n);
  const auto* records = reinterpret_cast<const leak_block*>(out->entries.data());
  for (size_t i = 0; i < n; i++) {
    blocks[i].address = records[i].address;
    blocks[i].size = records[i].size_fn & LEAK_SIZE_MASK;
  }
  std::string error;
  if (!ScanHeap(world.pid, blocks, world.threads, options_, &out->result, &error)) out->result = ScanResult{};
  uint64_t t1 = MonotonicNs();
  out->scan_ns = t1 - t0;
  out->pause_ns = t1 - world.stopped_ns;
}

bool ScanSession::ScanNow(ScanOutcome* out, std::string* error) {
  bool ok;
  StopWorld* follower;
  {
    std::lock_guard<std::mutex> lock(mu_);
    follower = follower_.get();
  }
  auto work = [&](const HeldWorld& world) { Scan(world, out); };
  if (follower != nullptr) {
    ok = follower->Pause(work);
    if (!ok) *error = "the process is exiting or gone";
  } else {
    ok = StopOnce(pid_, work, error);
  }
  if (ok && out->result.kind.size() != out->entries.size() / sizeof(leak_block)) {
    *error = "its memory could not be read";
    ok = false;
  }
  return ok;
}

std::unique_ptr<ScanOutcome> ScanSession::TakeExitOutcome() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::move(exit_outcome_);
}

std::string ScanSession::NotScannedReason() {
  std::lock_guard<std::mutex> lock(mu_);
  if (exit_outcome_) return "";
  if (!exit_error_.empty()) return exit_error_;
  if (!following_) return "the exit is held only for a program ebpf-leak starts";
  if (follower_) {
    std::string reason = follower_->not_held_reason();
    if (!reason.empty()) return reason;
  }
  return "it did not exit while traced";
}

}  // namespace ebpf_leak
