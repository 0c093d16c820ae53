// A tiny Node-API addon to show ebpf-leak's test helpers at work: greetLeaky() leaks the buffer it
// formats into, greet() is the fixed version, checksum() keeps a lazily built table for the life
// of the process (a one-time allocation, not a leak), and a background thread can be started that
// leaks on its own, unrelated to any call.
#include <napi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

namespace example {

constexpr size_t kGreetingBytes = 64;

// Formats "Hello, NAME!" into a new malloc()ed buffer, which the caller must free().
__attribute__((noinline)) char* FormatGreeting(const std::string& name) {
  char* buffer = static_cast<char*>(malloc(kGreetingBytes));
  snprintf(buffer, kGreetingBytes, "Hello, %s!", name.c_str());
  return buffer;
}

// The bug: the buffer is never freed. 64 bytes per call.
Napi::Value GreetLeaky(const Napi::CallbackInfo& info) {
  std::string name = info[0].As<Napi::String>();
  char* greeting = FormatGreeting(name);
  return Napi::String::New(info.Env(), greeting);
}

// The fix.
Napi::Value Greet(const Napi::CallbackInfo& info) {
  std::string name = info[0].As<Napi::String>();
  char* greeting = FormatGreeting(name);
  Napi::String result = Napi::String::New(info.Env(), greeting);
  free(greeting);
  return result;
}

// CRC-32 table, built on first use and kept: allocated once, never freed, not a leak.
__attribute__((noinline)) const uint32_t* CrcTable() {
  static uint32_t* table = nullptr;
  if (table == nullptr) {
    table = static_cast<uint32_t*>(malloc(256 * sizeof(uint32_t)));
    for (uint32_t n = 0; n < 256; n++) {
      uint32_t c = n;
      for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      table[n] = c;
    }
  }
  return table;
}

Napi::Value Checksum(const Napi::CallbackInfo& info) {
  std::string data = info[0].As<Napi::String>();
  const uint32_t* table = CrcTable();
  uint32_t crc = 0xffffffffu;
  for (unsigned char ch : data) crc = table[(crc ^ ch) & 0xff] ^ (crc >> 8);
  return Napi::Number::New(info.Env(), crc ^ 0xffffffffu);
}

// A thread of the process that leaks 128 bytes every millisecond while it runs, whatever the
// JavaScript thread is doing.
std::atomic<bool> background_running{false};
std::thread background;

__attribute__((noinline)) void BackgroundLeakLoop() {
  while (background_running.load()) {
    void* volatile leaked = malloc(128);
    (void)leaked;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

Napi::Value StartBackgroundLeak(const Napi::CallbackInfo& info) {
  if (!background_running.exchange(true)) background = std::thread(BackgroundLeakLoop);
  return info.Env().Undefined();
}

void StopBackground() {
  if (background_running.exchange(false) && background.joinable()) background.join();
}

Napi::Value StopBackgroundLeak(const Napi::CallbackInfo& info) {
  StopBackground();
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("greetLeaky", Napi::Function::New(env, GreetLeaky, "greetLeaky"));
  exports.Set("greet", Napi::Function::New(env, Greet, "greet"));
  exports.Set("checksum", Napi::Function::New(env, Checksum, "checksum"));
  exports.Set("startBackgroundLeak", Napi::Function::New(env, StartBackgroundLeak, "startBackgroundLeak"));
  exports.Set("stopBackgroundLeak", Napi::Function::New(env, StopBackgroundLeak, "stopBackgroundLeak"));
  env.AddCleanupHook(StopBackground);  // a joinable std::thread must not outlive the process
  return exports;
}

}  // namespace example

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return example::Init(env, exports); }
NODE_API_MODULE(native_addon, InitAddon)
