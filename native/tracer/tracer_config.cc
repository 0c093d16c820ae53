// The Tracer's config from JS: every field is given by lib/ (lib/tracer/options.ts owns every
// default and limit); a missing or mistyped one is a bug there, reported as such instead of
// replaced by a value of our own.
#include "tracer/tracer_config.h"

#include <string>

#include "abi/unwind_types.h"

namespace ebpf_leak {

namespace {

[[noreturn]] void MissingField(const Napi::Object& o, const char* key, const char* type) {
  throw Napi::TypeError::New(o.Env(), std::string("new Tracer(config): config.") + key + " must be " + type);
}
uint32_t GetUint(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) MissingField(o, key, "a number");
  return v.As<Napi::Number>().Uint32Value();
}
bool GetBool(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsBoolean()) MissingField(o, key, "a boolean");
  return v.As<Napi::Boolean>().Value();
}

uint64_t GetU64(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsBigInt()) {
    bool lossless = true;
    return v.As<Napi::BigInt>().Uint64Value(&lossless);
  }
  if (!v.IsNumber()) MissingField(o, key, "a number or a bigint");
  return static_cast<uint64_t>(v.As<Napi::Number>().DoubleValue());
}
std::vector<std::string> GetStrings(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsArray()) MissingField(o, key, "an array of strings");
  Napi::Array list = v.As<Napi::Array>();
  std::vector<std::string> out;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value item = list.Get(i);
    if (!item.IsString()) MissingField(o, key, "an array of strings");
    out.push_back(item.As<Napi::String>());
  }
  return out;
}
uint32_t UnwindModeOf(const Napi::Object& o) {
  Napi::Value v = o.Get("unwind");
  std::string m = v.IsString() ? std::string(v.As<Napi::String>()) : "";
  if (m == "fp") return LEAK_UNWIND_FP;
  if (m == "dwarf") return LEAK_UNWIND_DWARF;
  if (m == "auto") return LEAK_UNWIND_AUTO;
  MissingField(o, "unwind", "'auto', 'dwarf' or 'fp'");
}

}  // namespace

std::vector<ProbeSpec> ProbesFromJs(const Napi::Value& value) {
  std::vector<ProbeSpec> probes;
  if (!value.IsArray()) return probes;
  Napi::Array list = value.As<Napi::Array>();
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Object p = list.Get(i).As<Napi::Object>();
    ProbeSpec spec;
    spec.fn = GetUint(p, "fn");
    spec.path = p.Get("path").ToString();
    spec.entry_offset = GetU64(p, "entryOffset");
    spec.return_offset = GetU64(p, "returnOffset");
    spec.entry_only = p.Has("entryOnly") && p.Get("entryOnly").ToBoolean();
    spec.after_call = p.Has("afterCall") && p.Get("afterCall").ToBoolean();
    spec.call_return_delta =
        p.Has("callReturnDelta") && p.Get("callReturnDelta").IsNumber() ? p.Get("callReturnDelta").As<Napi::Number>().Int64Value() : 0;
    if (p.Has("site") && p.Get("site").IsObject()) {
      Napi::Object site = p.Get("site").As<Napi::Object>();
      if (site.Get("code").IsTypedArray()) {
        Napi::Uint8Array code = site.Get("code").As<Napi::Uint8Array>();
        spec.site_code.assign(code.Data(), code.Data() + code.ElementLength());
      }
      spec.site_return_at = GetUint(site, "returnAt");
      spec.site_sp_delta = GetUint(site, "spDelta");
      spec.site_zero_as_one = GetBool(site, "zeroAsOne");
      // Bit i: an instruction starts at byte i of the code (instruction offsets, below 64).
      if (site.Get("instructionStarts").IsArray()) {
        Napi::Array starts = site.Get("instructionStarts").As<Napi::Array>();
        for (uint32_t k = 0; k < starts.Length(); k++) {
          uint32_t at = starts.Get(k).ToNumber().Uint32Value();
          if (at < 64) spec.site_insn_starts |= uint64_t{1} << at;
        }
      }
    }
    probes.push_back(std::move(spec));
  }
  return probes;
}

TracerConfig TracerConfigFromJs(const Napi::Object& o) {
  TracerConfig config;
  config.pid = static_cast<int32_t>(GetUint(o, "pid"));
  config.wait_for_exec = GetBool(o, "waitForExec");
  config.classic_uprobes = GetBool(o, "classicUprobes");
  config.max_allocations = GetUint(o, "maxAllocations");
  config.events = GetBool(o, "events");
  config.event_buffer_bytes = GetUint(o, "eventBufferBytes");
  config.stacks = GetBool(o, "stacks");
  config.stack_depth = GetUint(o, "stackDepth");
  config.stack_map_entries = GetUint(o, "stackMapEntries");
  config.page_size = GetUint(o, "pageSize");
  config.sample_every_bytes = GetU64(o, "sampleEveryBytes");
  config.ignore_own_threads = GetBool(o, "ignoreOwnThreads");
  config.unwind.mode = UnwindModeOf(o);
  config.unwind.files = GetStrings(o, "unwindFiles");
  Napi::Value loader = o.Get("loaderPath");
  if (loader.IsString()) {
    config.loader_path = loader.As<Napi::String>();
    config.loader_offset = GetU64(o, "loaderOffset");
  }
  config.unwind.table_rows = GetUint(o, "unwindTableRows");
  config.unwind.stack_totals = GetBool(o, "stackTotals");
  config.heap_errors = GetBool(o, "heapErrors");
  config.release_stacks = GetBool(o, "releaseStacks");
  config.freed_blocks = GetUint(o, "freedBlocks");
  config.allocator_inode = GetU64(o, "allocatorInode");
  config.supervise = GetBool(o, "supervise");
  config.follow_forks = config.supervise && GetBool(o, "followForks");
  config.scan_at_exit = GetBool(o, "scanAtExit") && (config.supervise || !config.wait_for_exec);
  config.hold_exit = config.scan_at_exit && !config.supervise;
  if (config.hold_exit && o.Get("holdRefused").IsString()) {
    config.hold_exit = false;
    config.hold_refused = o.Get("holdRefused").ToString().Utf8Value();
  }
  config.glibc = GetBool(o, "glibc");
  config.image_keys = !config.supervise && !config.wait_for_exec;
  Napi::Value btf = o.Get("btfPath");
  if (btf.IsString()) config.btf_path = btf.As<Napi::String>();
  config.probes = ProbesFromJs(o.Get("probes"));
  return config;
}

}  // namespace ebpf_leak
