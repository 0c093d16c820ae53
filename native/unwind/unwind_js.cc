// What JS sees of the stack walker: unwindTable(path) for tests and diagnostics, and the object
// Tracer.unwindStats() returns. The walker itself is unwinder.cc.
#include "unwind/unwind_js.h"
#include "addon/errors.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "abi/leak.h"
#include "leak.skel.h"
#include "target/target_file.h"
#include "unwind/unwind_table.h"

namespace ebpf_leak {

UnwindStats Unwinder::Stats() {
  UnwindStats st;
  st.mode = mode_;
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu > 0) {
    std::vector<leak_unwind_counters> per_cpu(static_cast<size_t>(ncpu));
    uint32_t zero = 0;
    if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.unwind_counters), &zero, per_cpu.data()) == 0) {
      // Word by word through memcpy: the fields are __u64 (unsigned long long), and summing them
      // through a uint64_t (unsigned long) pointer breaks strict aliasing (the reads below would
      // be folded to 0).
      constexpr size_t kWords = sizeof(leak_unwind_counters) / sizeof(uint64_t);
      uint64_t total[kWords] = {};
      for (const auto& c : per_cpu) {
        uint64_t v[kWords];
        memcpy(v, &c, sizeof v);
        for (size_t i = 0; i < kWords; i++) total[i] += v[i];
      }
      memcpy(&st.counters, total, sizeof st.counters);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  st.table_rows = next_row_;
  st.table_row_capacity = row_capacity_;
  st.rules = next_rule_;
  st.tables_full = tables_full_;
  st.mappings = published_.size();
  for (const auto& [key, m] : loaded_) st.modules.push_back({m.name, m.file.kind, m.file.count});
  return st;
}

Napi::Object UnwindStatsToJs(Napi::Env env, const UnwindStats& st) {
  Napi::Object o = Napi::Object::New(env);
  const char* modes[] = {"fp", "auto", "dwarf"};
  o.Set("mode", modes[st.mode < 3 ? st.mode : 0]);
  const leak_unwind_counters& sum = st.counters;
  auto num = [&](const char* name, uint64_t v) { o.Set(name, static_cast<double>(v)); };
  num("walks", sum.walks);
  num("frames", sum.frames);
  num("cacheHits", sum.cache_hits);
  num("cacheMisses", sum.cache_misses);
  num("newStacks", sum.new_stacks);
  num("incomplete", sum.incomplete);
  num("truncated", sum.truncated);
  num("collisions", sum.collisions);
  num("failures", sum.failures);
  num("missingFiles", sum.missing_files);
  num("totalsDropped", sum.totals_dropped);
  num("busy", sum.busy);
  num("tableRows", st.table_rows);
  num("tableRowCapacity", st.table_row_capacity);
  num("rules", st.rules);
  num("tablesFull", st.tables_full);
  num("mappings", st.mappings);
  Napi::Array modules = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto& m : st.modules) {
    Napi::Object entry = Napi::Object::New(env);
    entry.Set("path", m.path);
    entry.Set("kind", m.kind == LEAK_UNWIND_FILE_TABLE ? "table"
                      : m.kind == LEAK_UNWIND_FILE_FP  ? "frame-pointers"
                                                       : "none");
    entry.Set("rows", static_cast<double>(m.rows));
    modules.Set(i++, entry);
  }
  o.Set("modules", modules);
  return o;
}

// unwindTable(path): the table the walker gets for a file, for tests and diagnostics:
// { fdes, rbpFdes, keepsFramePointers, error?, offsets: Uint32Array, rules: Int32Array } with
// rules[4 * i ..] = cfa_type, cfa_off, rbp_type, rbp_off of the row at offsets[i].
Napi::Value UnwindTableJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "unwindTable(path: string)");
  std::string path = info[0].As<Napi::String>();
  struct stat st;
  std::string why;
  int fd = OpenTargetFile(path, &st, &why);
  if (fd < 0) {
    int err = errno;
    throw ToJsError(env, {TargetFileErrorCode(err), why, err});
  }
  std::shared_ptr<const UnwindTable> table = GetUnwindTable(fd);
  close(fd);
  Napi::Object o = Napi::Object::New(env);
  o.Set("fdes", static_cast<double>(table->fdes));
  o.Set("rbpFdes", static_cast<double>(table->rbp_fdes));
  o.Set("keepsFramePointers", table->keeps_frame_pointers);
  if (!table->error.empty()) o.Set("error", table->error);
  size_t n = table->rows.size();
  Napi::Uint32Array offsets = Napi::Uint32Array::New(env, n);
  Napi::Int32Array rules = Napi::Int32Array::New(env, 4 * n);
  for (size_t i = 0; i < n; i++) {
    const UnwindRow& r = table->rows[i];
    offsets[i] = r.off;
    rules[4 * i] = r.rule.cfa_type;
    rules[4 * i + 1] = r.rule.cfa_off;
    rules[4 * i + 2] = r.rule.rbp_type;
    rules[4 * i + 3] = r.rule.rbp_off;
  }
  o.Set("offsets", offsets);
  o.Set("rules", rules);
  return o;
}

}  // namespace ebpf_leak
