// Symbolizer over elfutils' libdwfl: FILE offsets within one ELF module -> frames (function,
// source file, line), innermost inlined callee first.
//
// JavaScript API (registered by InitSymbolizer):
//
//   symbolize(modulePath: string, offsets: BigUint64Array | Array<number | bigint>,
//             options?: { debugDirs?: string[] }) : Promise<SymbolizedBatch>
//   readBuildId(path: string) : string | null        // lowercase hex of NT_GNU_BUILD_ID
//
// The result has one entry per offset, in order: a list of frames (function, source file, line,
// inlined or not), innermost first. An offset is a file offset in modulePath (what /proc/PID/maps
// gives: address - start + offset); it is turned into an ELF virtual address through the PT_LOAD
// program headers. An entry has no frames when nothing is known about the address, and an error
// message instead when the module cannot be read (missing, truncated, corrupt) or the offset is in
// no PT_LOAD segment. Bad argument types throw a TypeError; nothing else throws.
//
// The result is compact, so that the JS thread does not build thousands of objects in one task
// (lib/report/symbolize.ts reads it in place, through lib/native/symbolized-batch.ts, and makes its frames in
// slices):
//
//   SymbolizedBatch = {
//     strings: Uint8Array,      // UTF-8 of each distinct string (symbol, file, error), back to back
//     stringEnds: Uint32Array,  // string i is strings[stringEnds[i - 1] (0 for i = 0), stringEnds[i])
//     entries: Int32Array,      // 2 per offset: first frame and frame count, or -1 and error string
//     frames: Int32Array,       // 5 per frame: symbol string or -1, file string or -1,
//                               //   line or 0, 1 when inlined into the next frame else 0,
//                               //   the mangled name (C++) the symbol was demangled from or -1
//   }
//
// Safety: we run as root on files a traced (possibly hostile) process controls.
//  - Files are opened through native/target/target_file.h: regular files only, checked before they are
//    opened for reading (a FIFO cannot hang us), and paths under /proc/PID/root/ resolved inside
//    that root, so a symlink in a container cannot point us at the host's files.
//  - The main ELF is read with ELF_C_READ (pread on demand, no mmap): a file truncated while we
//    hold it gives read errors, not SIGBUS. Separate debug files are copied into a memfd we own
//    before libdwfl maps them, for the same reason.
//  - Section and segment tables are checked against the file size before libdwfl sees the file.
//  - DIE trees are walked iteratively, with offsets required to move forward and a visit cap.
//  - No C++ exception crosses into C; the worker catches everything.
// What in-process parsing cannot rule out is a bug in libelf/libdw itself on crafted input, or a
// read that blocks forever on a file system the target controls (FUSE).
//
// Debug information is looked up (our own find_debuginfo, in the spirit of
// dwfl_standard_find_debuginfo):
//   1. by build ID: DIR/.build-id/xx/yyyy.debug for DIR in debugDirs, then
//      /proc/PID/root/usr/lib/debug (when the module is under /proc/PID/root), then /usr/lib/debug;
//   2. by .gnu_debuglink: the module's directory, its .debug/ subdirectory, and DIR/<module dir>/
//      for the same DIRs. A candidate must carry the module's build ID (or, when the module has
//      none, match the debuglink CRC).
//   3. dwz alternate files (.gnu_debugaltlink) by build ID and by the recorded path.
// .gnu_debugdata (MiniDebugInfo) symbol tables are read by libdwfl itself when elfutils was built
// with lzma (Debian's is), and only when the module has no .symtab and no debug file was found.
//
// Lookups: a module's function symbols are indexed once as sorted intervals (libdwfl's
// dwfl_module_addrinfo scans the whole table per call), and a CU's subprogram and
// inlined_subroutine DIEs are indexed by pc range the first time an address falls in it
// (dwarf_getscopes walks the CU again per call). Line numbers come from dwfl_module_getsrc; an
// inlined frame's caller line is the callee's DW_AT_call_file/DW_AT_call_line. Addresses in
// alignment padding between functions get no symbol (binutils' addr2line names the previous one).
//
// Caches: one Dwfl per module path (plus debugDirs), checked against the file's identity
// (device, inode, size, mtime, ctime) on every call and rebuilt when the file changed; up to
// kMaxModules modules, least recently used evicted. Each module keeps a per-offset result cache.
// A call with no offsets opens the module and builds its symbol index, and resolves with an empty
// batch: a warm-up, so that a report's first lookups do not wait for the debug files to be read.
//
// The parts: module_files.* (the files, read safely), dwarf_index.* (a CU's functions by pc range),
// module.* (one module: debug files, symbol index, lookups); here, the module cache and the JS API.

#include "symbols/symbolizer.h"
#include "symbols/module.h"
#include "addon/errors.h"
#include "addon/external_buffer.h"
#include "addon/queued_promise.h"

#include <libelf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using ebpf_leak::symbols::AddrResult;
using ebpf_leak::symbols::BuildIdOf;
using ebpf_leak::symbols::EnsureElfVersion;
using ebpf_leak::symbols::Failure;
using ebpf_leak::symbols::Frame;
using ebpf_leak::symbols::Module;
using ebpf_leak::symbols::OpenRegularFile;
using ebpf_leak::symbols::SameFile;

constexpr size_t kMaxModules = 64;
constexpr size_t kMaxOffsetsPerCall = 1u << 24;

// --- Module cache -------------------------------------------------------------------------------

struct CacheEntry {
  std::string key;
  std::unique_ptr<Module> module;
  uint64_t lastUse = 0;
};

std::mutex gMutex;  // guards the cache and every libdwfl call (libdwfl is not thread-safe)
std::vector<CacheEntry> gModules;
uint64_t gTick = 0;

struct Request {
  std::string path;
  std::vector<uint64_t> offsets;
  std::vector<std::string> debugDirs;
};

std::vector<AddrResult> RunRequest(const Request& req) {
  std::vector<AddrResult> results;
  std::lock_guard<std::mutex> lock(gMutex);
  try {
    EnsureElfVersion();
    std::string key = req.path;
    for (const auto& d : req.debugDirs) {
      key.push_back('\0');
      key += d;
    }
    struct stat st;
    std::string err;
    int fd = OpenRegularFile(req.path, &st, &err);
    auto found = std::find_if(gModules.begin(), gModules.end(),
                              [&](const CacheEntry& e) { return e.key == key; });
    if (fd < 0) {
      if (found != gModules.end()) gModules.erase(found);
      results.assign(req.offsets.size(), Failure(err));
      return results;
    }
    Module* module = nullptr;
    if (found != gModules.end() && SameFile(found->module->Stat(), st)) {
      close(fd);
      module = found->module.get();
      found->lastUse = ++gTick;
    } else {
      auto fresh = std::make_unique<Module>(req.path, req.debugDirs);
      fresh->Open(fd, st);
      if (found != gModules.end()) {
        found->module = std::move(fresh);
        found->lastUse = ++gTick;
        module = found->module.get();
      } else {
        if (gModules.size() >= kMaxModules) {
          auto oldest = std::min_element(
              gModules.begin(), gModules.end(),
              [](const CacheEntry& a, const CacheEntry& b) { return a.lastUse < b.lastUse; });
          gModules.erase(oldest);
        }
        gModules.push_back(CacheEntry{key, std::move(fresh), ++gTick});
        module = gModules.back().module.get();
      }
    }
    if (req.offsets.empty()) module->Prepare();
    results.reserve(req.offsets.size());
    for (uint64_t off : req.offsets) results.push_back(module->Lookup(off));
  } catch (const std::exception& e) {
    results.resize(req.offsets.size(), Failure(std::string("symbolization failed: ") + e.what()));
  }
  return results;
}

// --- N-API --------------------------------------------------------------------------------------

std::string StringArg(const Napi::Value& v, const char* what) {
  if (!v.IsString()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a string");
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s.empty() || s.find('\0') != std::string::npos)
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a non-empty path");
  return s;
}

uint64_t OffsetValue(const Napi::Value& v) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::TypeError::New(v.Env(), "offsets must fit in 64 bits unsigned");
    return u;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d > 9007199254740991.0 || d != static_cast<double>(static_cast<uint64_t>(d)))
      throw Napi::TypeError::New(v.Env(), "offsets must be non-negative integers");
    return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(v.Env(), "offsets must be numbers or bigints");
}

Request ParseRequest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Request req;
  req.path = StringArg(info[0], "modulePath");
  Napi::Value offs = info[1];
  if (offs.IsTypedArray()) {
    auto ta = offs.As<Napi::TypedArray>();
    if (ta.TypedArrayType() != napi_biguint64_array)
      throw Napi::TypeError::New(env, "offsets must be a BigUint64Array or an array");
    auto arr = offs.As<Napi::TypedArrayOf<uint64_t>>();
    if (arr.ElementLength() > kMaxOffsetsPerCall) throw Napi::RangeError::New(env, "too many offsets");
    req.offsets.assign(arr.Data(), arr.Data() + arr.ElementLength());
  } else if (offs.IsArray()) {
    auto arr = offs.As<Napi::Array>();
    uint32_t n = arr.Length();
    if (n > kMaxOffsetsPerCall) throw Napi::RangeError::New(env, "too many offsets");
    req.offsets.reserve(n);
    for (uint32_t i = 0; i < n; i++) req.offsets.push_back(OffsetValue(arr.Get(i)));
  } else {
    throw Napi::TypeError::New(env, "offsets must be a BigUint64Array or an array");
  }
  if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
    if (!info[2].IsObject()) throw Napi::TypeError::New(env, "options must be an object");
    Napi::Value dirs = info[2].As<Napi::Object>().Get("debugDirs");
    if (!dirs.IsUndefined() && !dirs.IsNull()) {
      if (!dirs.IsArray()) throw Napi::TypeError::New(env, "options.debugDirs must be an array of strings");
      auto arr = dirs.As<Napi::Array>();
      for (uint32_t i = 0; i < arr.Length(); i++)
        req.debugDirs.push_back(StringArg(arr.Get(i), "options.debugDirs[]"));
    }
  }
  return req;
}

// The results of one call in the compact form of the API comment at the top. Built on the worker
// thread: the JS thread then only wraps four buffers, where an object per frame (and a string per
// symbol) held it for ~30 ms on 10,000 libc addresses.
struct EncodedResults {
  std::vector<uint8_t> strings;
  std::vector<uint32_t> stringEnds;
  std::vector<int32_t> entries;
  std::vector<int32_t> frames;
};

constexpr size_t kFrameInts = 5;

EncodedResults Encode(const std::vector<AddrResult>& results) {
  EncodedResults out;
  // Keys point into `results`, which outlives the map.
  std::unordered_map<std::string_view, int32_t> ids;
  auto intern = [&](const std::string& s) -> int32_t {
    auto [it, added] = ids.emplace(s, static_cast<int32_t>(out.stringEnds.size()));
    if (added) {
      out.strings.insert(out.strings.end(), s.begin(), s.end());
      if (out.strings.size() > UINT32_MAX || out.stringEnds.size() >= INT32_MAX)
        throw std::length_error("too many results");
      out.stringEnds.push_back(static_cast<uint32_t>(out.strings.size()));
    }
    return it->second;
  };
  out.entries.reserve(results.size() * 2);
  for (const AddrResult& r : results) {
    if (r.failed) {
      out.entries.push_back(-1);
      out.entries.push_back(intern(r.error));
      continue;
    }
    size_t first = out.frames.size() / kFrameInts;
    if (first + r.frames.size() > INT32_MAX) throw std::length_error("too many results");
    out.entries.push_back(static_cast<int32_t>(first));
    out.entries.push_back(static_cast<int32_t>(r.frames.size()));
    for (const Frame& f : r.frames) {
      out.frames.push_back(f.symbol.empty() ? -1 : intern(f.symbol));
      out.frames.push_back(f.file.empty() ? -1 : intern(f.file));
      out.frames.push_back(f.line > 0 ? f.line : 0);
      out.frames.push_back(f.inlined ? 1 : 0);
      out.frames.push_back(f.mangled.empty() ? -1 : intern(f.mangled));
    }
  }
  return out;
}

Napi::Object EncodedToJs(Napi::Env env, EncodedResults&& e) {
  using ebpf_leak::TakeAsTypedArray;
  Napi::Object out = Napi::Object::New(env);
  out.Set("strings", TakeAsTypedArray(env, std::move(e.strings)));
  out.Set("stringEnds", TakeAsTypedArray(env, std::move(e.stringEnds)));
  out.Set("entries", TakeAsTypedArray(env, std::move(e.entries)));
  out.Set("frames", TakeAsTypedArray(env, std::move(e.frames)));
  return out;
}

class SymbolizeWorker : public Napi::AsyncWorker {
 public:
  SymbolizeWorker(Napi::Env env, Request req)
      : Napi::AsyncWorker(env, "ebpf-leak:symbolize"),
        deferred_(Napi::Promise::Deferred::New(env)),
        req_(std::move(req)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      encoded_ = Encode(RunRequest(req_));
    } catch (const std::exception& e) {
      SetError(std::string("symbolize failed: ") + e.what());
    } catch (...) {
      SetError("symbolize failed");
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    try {
      deferred_.Resolve(EncodedToJs(env, std::move(encoded_)));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (const std::exception& e) {
      deferred_.Reject(Napi::Error::New(env, e.what()).Value());
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Request req_;
  EncodedResults encoded_;
};

Napi::Value Symbolize(const Napi::CallbackInfo& info) {
  Request req = ParseRequest(info);
  return ebpf_leak::QueueForPromise(new SymbolizeWorker(info.Env(), std::move(req)));
}

Napi::Value ReadBuildId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info[0], "path");
  EnsureElfVersion();
  struct stat st;
  std::string err;
  int fd = OpenRegularFile(path, &st, &err);
  if (fd < 0) return env.Null();
  std::string id;
  if (Elf* elf = elf_begin(fd, ELF_C_READ, nullptr)) {
    if (elf_kind(elf) == ELF_K_ELF) id = BuildIdOf(elf);
    elf_end(elf);
  }
  close(fd);
  if (id.empty()) return env.Null();
  return Napi::String::New(env, id);
}

}  // namespace

void InitSymbolizer(Napi::Env env, Napi::Object exports) {
  exports.Set("symbolize", Napi::Function::New(env, Symbolize, "symbolize"));
  exports.Set("readBuildId", Napi::Function::New(env, ReadBuildId, "readBuildId"));
}
