// The JS object of one traced process: `new Tracer(config, onMessage)` with attach() / snapshot() /
// readStacks() / counters() / setMark() / eventsDelivered() / close() and the rest. It converts JS
// values, runs the slow calls on worker threads and hands messages to onMessage; the work is the
// TraceSession's (native/tracer/trace_session.h).
#pragma once

#include <napi.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "tracer/event_slots.h"
#include "tracer/trace_session.h"

namespace ebpf_leak {

struct AddonData;

class Tracer : public Napi::ObjectWrap<Tracer>, private SessionOutput {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Tracer(const Napi::CallbackInfo& info);
  ~Tracer() override;

  // Closes the session and lets go of onMessage. Idempotent; called from JS, from the destructor,
  // and from the env cleanup hook.
  void Close();

  TraceSession* session() { return session_.get(); }

 private:
  Napi::Value Attach(const Napi::CallbackInfo& info);
  Napi::Value Snapshot(const Napi::CallbackInfo& info);
  Napi::Value ReadStacks(const Napi::CallbackInfo& info);
  Napi::Value ReadModules(const Napi::CallbackInfo& info);
  Napi::Value ReadHeapErrors(const Napi::CallbackInfo& info);
  Napi::Value Counters(const Napi::CallbackInfo& info);
  Napi::Value SetMark(const Napi::CallbackInfo& info);
  Napi::Value ExitStatus(const Napi::CallbackInfo& info);
  Napi::Value EventsDelivered(const Napi::CallbackInfo& info);
  Napi::Value EventSlotsJs(const Napi::CallbackInfo& info);
  Napi::Value CloseJs(const Napi::CallbackInfo& info);
  Napi::Value CloseAsync(const Napi::CallbackInfo& info);
  Napi::Value Scan(const Napi::CallbackInfo& info);
  Napi::Value TakeExitScan(const Napi::CallbackInfo& info);
  Napi::Value ReadStackTotals(const Napi::CallbackInfo& info);
  Napi::Value UnwindStats(const Napi::CallbackInfo& info);
  static Napi::Value Demangle(const Napi::CallbackInfo& info);
  Napi::Value ResumeProcess(const Napi::CallbackInfo& info);
  Napi::Value AddProbes(const Napi::CallbackInfo& info);
  Napi::Value LoadUnwindFiles(const Napi::CallbackInfo& info);
  Napi::Value ProcessStats(const Napi::CallbackInfo& info);
  Napi::Value ProcessCounters(const Napi::CallbackInfo& info);

  // `count` event slots of `bytes` each, and the ArrayBuffers JS sees them through.
  void CreateEventSlots(Napi::Env env, int count, size_t bytes);
  // SessionOutput: from the session's threads, through the thread-safe function.
  void Post(const char* type, std::vector<uint8_t> bytes, int slot, size_t length) override;

  AddonData* addon_data_ = nullptr;
  Napi::ThreadSafeFunction on_message_;
  EventSlots event_slots_;  // made in the constructor when events are on
  std::vector<Napi::Reference<Napi::ArrayBuffer>> slot_buffers_;  // by slot
  std::unique_ptr<TraceSession> session_;  // after event_slots_: gone before them
};

}  // namespace ebpf_leak
