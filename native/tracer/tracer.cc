// Node-API glue of the Tracer: JS values in and out, worker threads for the slow calls, messages
// to onMessage. What a call does is the TraceSession's (native/tracer/trace_session.h).
#include "tracer/tracer.h"

#include <malloc.h>
#include <sys/mman.h>

#include <cerrno>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>

#include "abi/leak.h"
#include "addon/addon_data.h"
#include "addon/errors.h"
#include "addon/external_buffer.h"
#include "addon/page_buffer.h"
#include "addon/page_buffer_js.h"
#include "addon/queued_promise.h"
#include "scan/scan_js.h"
#include "symbols/demangle.h"
#include "tracer/tracer_config.h"
#include "unwind/unwind_js.h"

namespace ebpf_leak {

namespace {

// An events batch is at most this large. 256 KB is ~4,700 events: at the fastest rates measured
// (~600,000 events a second) a slot fills every ~8 ms.
constexpr size_t kMaxBatchBytes = 256 << 10;
// Events batches JS may hold, each until its listeners have had it (eventsDelivered()). With every
// slot in JS the poll thread stops draining: the ring buffer fills and the BPF side counts what it
// drops, rather than this process growing or the event loop having to deliver a backlog at once
// (4 MB, ~75,000 events, is a few tens of ms of delivery).
constexpr int kEventSlots = 16;

struct Message {
  const char* type;
  std::vector<uint8_t> bytes;
  int slot;  // >= 0: an events batch in that event slot, `length` bytes
  size_t length;
};

// Base for the promise-returning calls: keeps the JS object alive while the worker runs and
// turns a NativeError into a JS error with its code.
class TracerWorker : public Napi::AsyncWorker {
 public:
  TracerWorker(Napi::Env env, Tracer* tracer, Napi::Object self)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), session_(tracer->session()) {
    self_ = Napi::Persistent(self);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Fail(const NativeError& e) {
    error_ = e;
    SetError(e.message);
  }
  void OnError(const Napi::Error&) override { deferred_.Reject(ToJsError(Env(), error_).Value()); }

  Napi::Promise::Deferred deferred_;
  TraceSession* session_;  // lives as long as the JS object, which self_ holds
  Napi::ObjectReference self_;
  NativeError error_;
};

class AttachWorker : public TracerWorker {
 public:
  using TracerWorker::TracerWorker;
  void Execute() override {
    NativeError e;
    if (!session_->DoAttach(&e)) Fail(e);
    // Gives the OS back the freed memory glibc keeps in its arenas (loading and verifying the BPF
    // object, V8's compiler zones), counted in RSS for the process's lifetime otherwise: about
    // 3 MB of the bench's tracer RSS with 1,000,000 blocks outstanding. Here, off the JS thread.
    malloc_trim(0);
  }
  void OnOK() override {
    Napi::Object result = Napi::Object::New(Env());
    result.Set("mode", session_->attach_mode());
    deferred_.Resolve(result);
  }
};

class SnapshotWorker : public TracerWorker {
 public:
  SnapshotWorker(Napi::Env env, Tracer* tracer, Napi::Object self, bool timestamps)
      : TracerWorker(env, tracer, self), timestamps_(timestamps) {}
  void Execute() override {
    NativeError e;
    if (!session_->DoSnapshot(timestamps_, &entries_, &counters_, &e)) Fail(e);
    // Work between snapshots (table and map reads, symbolizing) frees in whichever worker thread's
    // arena it ran, and glibc keeps what it cannot trim from an arena's top: under a snapshot a
    // second that grew the RSS by about 1 MB a minute. Returned once a snapshot, off the JS thread.
    malloc_trim(0);
    now_ns_ = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object result = Napi::Object::New(env);
    Napi::ArrayBuffer counters = Napi::ArrayBuffer::New(env, counters_.size());
    if (!counters_.empty()) memcpy(counters.Data(), counters_.data(), counters_.size());
    result.Set("entries", TakeAsArrayBuffer(env, &entries_));
    result.Set("counters", counters);
    // bpf_ktime_get_ns() and steady_clock are both CLOCK_MONOTONIC on Linux.
    result.Set("nowNs", Napi::BigInt::New(env, now_ns_));
    deferred_.Resolve(result);
  }

 private:
  bool timestamps_;
  PageBuffer entries_;
  std::vector<uint8_t> counters_;
  uint64_t now_ns_ = 0;
};

class ScanWorker : public TracerWorker {
 public:
  ScanWorker(Napi::Env env, Tracer* tracer, Napi::Object self, pid_t pid)
      : TracerWorker(env, tracer, self), pid_(pid) {}
  void Execute() override {
    NativeError e;
    if (!session_->DoScan(pid_, &outcome_, &e)) Fail(e);
  }
  void OnOK() override { deferred_.Resolve(ScanOutcomeToJs(Env(), &outcome_)); }

 private:
  pid_t pid_;
  ScanOutcome outcome_;
};

// close() off the JS thread: closing a uprobe link waits for other CPUs to leave its probes
// (~30-40 ms a link), which would stall the event loop.
class CloseWorker : public TracerWorker {
 public:
  CloseWorker(Napi::Env env, Tracer* tracer, Napi::Object self) : TracerWorker(env, tracer, self), tracer_(tracer) {}
  void Execute() override { tracer_->Close(); }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

 private:
  Tracer* tracer_;
};

// A read whose result is bytes, handed to JS as an ArrayBuffer.
class BytesWorker : public TracerWorker {
 public:
  using Read = bool (TraceSession::*)(std::vector<uint8_t>* out, NativeError* error);
  BytesWorker(Napi::Env env, Tracer* tracer, Napi::Object self, Read read)
      : TracerWorker(env, tracer, self), read_(read) {}
  void Execute() override {
    NativeError e;
    if (!(session_->*read_)(&bytes_, &e)) Fail(e);
  }
  void OnOK() override { deferred_.Resolve(TakeAsArrayBuffer(Env(), std::move(bytes_))); }

 private:
  Read read_;
  std::vector<uint8_t> bytes_;
};

class ReadStacksWorker : public TracerWorker {
 public:
  ReadStacksWorker(Napi::Env env, Tracer* tracer, Napi::Object self, std::vector<int64_t> ids)
      : TracerWorker(env, tracer, self), ids_(std::move(ids)) {}
  void Execute() override {
    NativeError e;
    if (!session_->DoReadStacks(ids_, &stacks_, &e)) Fail(e);
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Array result = Napi::Array::New(env, stacks_.size());
    for (size_t i = 0; i < stacks_.size(); i++) {
      Napi::BigUint64Array frames = Napi::BigUint64Array::New(env, stacks_[i].size());
      for (size_t j = 0; j < stacks_[i].size(); j++) frames[j] = stacks_[i][j];
      result.Set(i, frames);
    }
    deferred_.Resolve(result);
  }

 private:
  std::vector<int64_t> ids_;
  std::vector<std::vector<uint64_t>> stacks_;
};

class AddProbesWorker : public TracerWorker {
 public:
  AddProbesWorker(Napi::Env env, Tracer* tracer, Napi::Object self, std::vector<ProbeSpec> probes)
      : TracerWorker(env, tracer, self), probes_(std::move(probes)) {}
  void Execute() override {
    NativeError e;
    if (!session_->DoAddProbes(probes_, &e)) Fail(e);
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

 private:
  std::vector<ProbeSpec> probes_;
};

class LoadUnwindFilesWorker : public TracerWorker {
 public:
  LoadUnwindFilesWorker(Napi::Env env, Tracer* tracer, Napi::Object self, std::vector<std::string> paths)
      : TracerWorker(env, tracer, self), paths_(std::move(paths)) {}
  void Execute() override {
    NativeError e;
    if (!session_->DoLoadUnwindFiles(paths_, &e)) Fail(e);
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

 private:
  std::vector<std::string> paths_;
};

}  // namespace

Napi::Function Tracer::Define(Napi::Env env) {
  return DefineClass(env, "Tracer",
                     {
                         InstanceMethod<&Tracer::Attach>("attach"),
                         InstanceMethod<&Tracer::Snapshot>("snapshot"),
                         InstanceMethod<&Tracer::Scan>("scan"),
                         InstanceMethod<&Tracer::TakeExitScan>("takeExitScan"),
                         InstanceMethod<&Tracer::ReadStacks>("readStacks"),
                         InstanceMethod<&Tracer::ReadModules>("readModules"),
                         InstanceMethod<&Tracer::ReadHeapErrors>("readHeapErrors"),
                         InstanceMethod<&Tracer::Counters>("counters"),
                         InstanceMethod<&Tracer::SetMark>("setMark"),
                         InstanceMethod<&Tracer::ExitStatus>("exitStatus"),
                         InstanceMethod<&Tracer::EventsDelivered>("eventsDelivered"),
                         InstanceMethod<&Tracer::EventSlotsJs>("eventSlots"),
                         InstanceMethod<&Tracer::CloseJs>("close"),
                         InstanceMethod<&Tracer::CloseAsync>("closeAsync"),
                         StaticMethod<&Tracer::Demangle>("demangle"),
                         InstanceMethod<&Tracer::ReadStackTotals>("readStackTotals"),
                         InstanceMethod<&Tracer::UnwindStats>("unwindStats"),
                         InstanceMethod<&Tracer::ResumeProcess>("resumeProcess"),
                         InstanceMethod<&Tracer::AddProbes>("addProbes"),
                         InstanceMethod<&Tracer::LoadUnwindFiles>("loadUnwindFiles"),
                         InstanceMethod<&Tracer::ProcessStats>("processStats"),
                         InstanceMethod<&Tracer::ProcessCounters>("processCounters"),
                     });
}

// new Tracer(config, onMessage): validation happened in lib/; this only copies the fields.
Tracer::Tracer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Tracer>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction())
    throw Napi::TypeError::New(env, "new Tracer(config: object, onMessage: function)");
  TracerConfig config = TracerConfigFromJs(info[0].As<Napi::Object>());
  if (config.events) CreateEventSlots(env, kEventSlots, kMaxBatchBytes);
  on_message_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "ebpf-leak poll",
                                              0, 1);
  SessionOutput* output = this;
  session_ = std::make_unique<TraceSession>(std::move(config), output, &event_slots_);
  addon_data_ = AddonData::From(env);
  addon_data_->tracers.insert(this);
}

// Fresh pages, committed only when the poll thread first writes them: no zeroing here on the JS
// thread (calloc from the heap would clear every byte), and the slots a trace never needs cost
// nothing. Each ArrayBuffer unmaps its own part when collected.
void Tracer::CreateEventSlots(Napi::Env env, int count, size_t bytes) {
  void* region = mmap(nullptr, count * bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) throw Napi::Error::New(env, "cannot map the event buffers: " + ErrnoText(errno));
  auto* base = static_cast<uint8_t*>(region);
  for (int i = 0; i < count; i++)
    slot_buffers_.push_back(Napi::Persistent(PagesAsArrayBuffer(env, base + i * bytes, bytes, bytes)));
  event_slots_.Init(base, count, bytes);
}

// ObjectWrap finalizers run before the env's instance data is freed, so addon_data_ is valid.
Tracer::~Tracer() {
  Close();
  for (auto& buffer : slot_buffers_) buffer.Reset();
  addon_data_->tracers.erase(this);
}

void Tracer::Close() {
  if (session_->Close()) on_message_.Release();
}

void Tracer::Post(const char* type, std::vector<uint8_t> bytes, int slot, size_t length) {
  auto* message = new Message{type, std::move(bytes), slot, length};
  // The callback may run after this Tracer is gone (a batch queued just before close): it holds
  // nothing of the tracer's. JS has its own references to the slots' ArrayBuffers.
  napi_status status =
      on_message_.NonBlockingCall(message, [](Napi::Env env, Napi::Function callback, Message* m) {
        std::unique_ptr<Message> owned(m);
        if (env == nullptr || callback.IsEmpty()) return;  // JS torn down
        Napi::Value data = owned->slot >= 0 ? env.Null() : Napi::Value(TakeAsArrayBuffer(env, std::move(owned->bytes)));
        try {
          callback.Call({Napi::String::New(env, owned->type), data, Napi::Number::New(env, static_cast<double>(owned->length)),
                         Napi::Number::New(env, owned->slot)});
        } catch (const Napi::Error& e) {
          e.ThrowAsJavaScriptException();
        }
      });
  if (status != napi_ok) {
    if (slot >= 0) event_slots_.Return(slot);
    delete message;
  }
}

// scan(pid?): stops the target's threads (followForks: those of the traced process `pid`),
// scans, resumes => Promise<scan outcome>
Napi::Value Tracer::Scan(const Napi::CallbackInfo& info) {
  pid_t pid = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0;
  return QueueForPromise(new ScanWorker(info.Env(), this, info.This().As<Napi::Object>(), pid));
}

// takeExitScan() => the scan made at the target's exit, or { notScanned: reason }. Once the
// target is gone.
Napi::Value Tracer::TakeExitScan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string reason;
  std::unique_ptr<ScanOutcome> outcome = session_->TakeExitScan(&reason);
  if (outcome) return ScanOutcomeToJs(env, outcome.get());
  Napi::Object o = Napi::Object::New(env);
  o.Set("notScanned", reason);
  return o;
}

Napi::Value Tracer::Attach(const Napi::CallbackInfo& info) {
  return QueueForPromise(new AttachWorker(info.Env(), this, info.This().As<Napi::Object>()));
}

// snapshot(timestamps: boolean)
Napi::Value Tracer::Snapshot(const Napi::CallbackInfo& info) {
  bool timestamps = info.Length() > 0 && info[0].ToBoolean().Value();
  return QueueForPromise(new SnapshotWorker(info.Env(), this, info.This().As<Napi::Object>(), timestamps));
}

Napi::Value Tracer::ReadHeapErrors(const Napi::CallbackInfo& info) {
  return QueueForPromise(
      new BytesWorker(info.Env(), this, info.This().As<Napi::Object>(), &TraceSession::DoReadHeapErrors));
}

Napi::Value Tracer::ReadModules(const Napi::CallbackInfo& info) {
  return QueueForPromise(new BytesWorker(info.Env(), this, info.This().As<Napi::Object>(), &TraceSession::DoReadModules));
}

Napi::Value Tracer::ReadStacks(const Napi::CallbackInfo& info) {
  std::vector<int64_t> ids;
  if (info.Length() > 0 && info[0].IsArray()) {
    Napi::Array list = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++)
      ids.push_back(list.Get(i).As<Napi::Number>().Int64Value());
  }
  return QueueForPromise(new ReadStacksWorker(info.Env(), this, info.This().As<Napi::Object>(), std::move(ids)));
}

// Summed counters, synchronously: one small map read.
Napi::Value Tracer::Counters(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<uint8_t> counters;
  if (!session_->Counters(&counters)) return env.Null();
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, counters.size());
  memcpy(buffer.Data(), counters.data(), counters.size());
  return buffer;
}

// exitStatus(): the wait status recorded as an attached target's last thread exited, or null.
Napi::Value Tracer::ExitStatus(const Napi::CallbackInfo& info) {
  uint32_t status = 0;
  if (!session_->ExitStatus(&status)) return info.Env().Null();
  return Napi::Number::New(info.Env(), status);
}

Napi::Value Tracer::SetMark(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && info[0].IsNumber())
    session_->SetMark(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
  return info.Env().Undefined();
}

// Tracer.demangle(name): the C++ (Itanium ABI) demangling of a symbol name, or null when it is
// not a mangled name. For suppression rules written with mangled names, as valgrind writes them.
Napi::Value Tracer::Demangle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) return env.Null();
  std::string name = info[0].As<Napi::String>();
  std::optional<std::string> demangled = DemangleMangled(name.c_str());
  if (!demangled) return env.Null();
  return Napi::String::New(env, *demangled);
}

Napi::Value Tracer::CloseAsync(const Napi::CallbackInfo& info) {
  return QueueForPromise(new CloseWorker(info.Env(), this, info.This().As<Napi::Object>()));
}

// eventsDelivered(slot): the listeners have had the events batch in `slot` (or it was dropped
// unheard); it can be written again.
Napi::Value Tracer::EventsDelivered(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && info[0].IsNumber()) event_slots_.Return(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

// eventSlots(): the ArrayBuffers events batches arrive in, by slot; empty with events off.
Napi::Value Tracer::EventSlotsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array list = Napi::Array::New(env, slot_buffers_.size());
  for (size_t i = 0; i < slot_buffers_.size(); i++) list.Set(i, slot_buffers_[i].Value());
  return list;
}

Napi::Value Tracer::CloseJs(const Napi::CallbackInfo& info) {
  Close();
  return info.Env().Undefined();
}

// readStackTotals(): ArrayBuffer of {s64 stack id, s64 bytes, s64 blocks} records, the
// outstanding bytes and blocks of every stack id seen (-1: no stack), kept by the BPF program.
Napi::Value Tracer::ReadStackTotals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<uint8_t> out;
  NativeError error;
  if (!session_->ReadStackTotals(&out, &error)) {
    if (!error.code.empty()) ToJsError(env, error).ThrowAsJavaScriptException();
    return env.Null();
  }
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, out.size());
  if (!out.empty()) memcpy(buffer.Data(), out.data(), out.size());
  return buffer;
}

// unwindStats(): the walker's counters and tables; null once closed.
Napi::Value Tracer::UnwindStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Value stats = env.Null();
  session_->WithUnwinder([&](Unwinder& unwinder) { stats = UnwindStatsToJs(env, unwinder.Stats()); });
  return stats;
}

// resumeProcess(pid): JS has checked the image a process exec'd; it may run.
Napi::Value Tracer::ResumeProcess(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && info[0].IsNumber())
    session_->ResumeProcess(static_cast<pid_t>(info[0].As<Napi::Number>().Int32Value()));
  return info.Env().Undefined();
}

// addProbes(probes): attaches probes on another allocator file (a new image's).
Napi::Value Tracer::AddProbes(const Napi::CallbackInfo& info) {
  std::vector<ProbeSpec> probes = ProbesFromJs(info.Length() > 0 ? info[0] : info.Env().Undefined());
  return QueueForPromise(new AddProbesWorker(info.Env(), this, info.This().As<Napi::Object>(), std::move(probes)));
}

// loadUnwindFiles(paths): the unwind tables of the files a new image will map, on a worker thread.
Napi::Value Tracer::LoadUnwindFiles(const Napi::CallbackInfo& info) {
  std::vector<std::string> paths;
  if (info.Length() > 0 && info[0].IsArray()) {
    Napi::Array list = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value v = list.Get(i);
      if (v.IsString()) paths.push_back(v.As<Napi::String>().Utf8Value());
    }
  }
  return QueueForPromise(new LoadUnwindFilesWorker(info.Env(), this, info.This().As<Napi::Object>(), std::move(paths)));
}

// processCounters(index): struct leak_counters of a traced process now, or null.
Napi::Value Tracer::ProcessCounters(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  leak_counters c{};
  if (info.Length() < 1 || !info[0].IsNumber() ||
      !session_->ProcessCounters(info[0].As<Napi::Number>().Uint32Value(), &c))
    return env.Null();
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, sizeof c);
  memcpy(buffer.Data(), &c, sizeof c);
  return buffer;
}

// processStats(): { untracedChildren, lostChildren, supervised }.
Napi::Value Tracer::ProcessStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ebpf_leak::ProcessStats stats = session_->Processes();
  Napi::Object out = Napi::Object::New(env);
  out.Set("untracedChildren", Napi::Number::New(env, static_cast<double>(stats.untraced_children)));
  out.Set("lostChildren", Napi::Number::New(env, static_cast<double>(stats.lost_children)));
  out.Set("supervised", Napi::Boolean::New(env, stats.supervised));
  return out;
}

}  // namespace ebpf_leak
