#include "addon/errors.h"

#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace ebpf_leak {

std::string ErrnoText(int err) { return std::string(strerror(err)); }

namespace {
thread_local std::string* g_log_sink = nullptr;

int PrintToSink(enum libbpf_print_level level, const char* format, va_list args) {
  if (g_log_sink == nullptr) return 0;  // nobody asked: libbpf stays quiet rather than print
  char buf[1024];
  va_list copy;
  va_copy(copy, args);
  int n = vsnprintf(buf, sizeof buf, format, copy);
  va_end(copy);
  if (n < 0) return n;
  if (static_cast<size_t>(n) < sizeof buf) {
    g_log_sink->append(buf, n);
  } else {
    std::string big(n + 1, '\0');
    vsnprintf(big.data(), big.size(), format, args);
    big.resize(n);
    g_log_sink->append(big);
  }
  return n;
}
}  // namespace

void InstallLibbpfPrint() { libbpf_set_print(PrintToSink); }

LibbpfLogCapture::LibbpfLogCapture() : previous_(g_log_sink) { g_log_sink = &text_; }
LibbpfLogCapture::~LibbpfLogCapture() { g_log_sink = previous_; }

std::string LibbpfLogCapture::Tail(size_t max_bytes) const {
  if (text_.size() <= max_bytes) return text_;
  return "...\n" + text_.substr(text_.size() - max_bytes);
}

std::string CodeForErrno(int err, const char* fallback) {
  switch (err) {
    case EPERM:
    case EACCES:
      return "ELEAK_PERM";
    case ESRCH:
      return "ELEAK_TARGET_EXITED";
    default:
      return fallback;
  }
}

Napi::Error ToJsError(Napi::Env env, const NativeError& e) {
  Napi::Error error = Napi::Error::New(env, e.message);
  error.Set("code", Napi::String::New(env, e.code));
  if (e.err != 0) error.Set("errno", Napi::Number::New(env, e.err));
  return error;
}

}  // namespace ebpf_leak
