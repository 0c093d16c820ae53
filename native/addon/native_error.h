// What failed in native code, with a stable `code` (ELEAK_*), in plain C++: the Node-API glue turns
// it into a JS error (native/addon/errors.h), lib/errors.ts into a typed class. Native code only
// reports what happened; wording for users is decided in TS.
#pragma once

#include <cstddef>
#include <string>

namespace ebpf_leak {

struct NativeError {
  std::string code;     // ELEAK_*
  std::string message;  // what failed, with errno text and libbpf's log when there is one
  int err = 0;          // positive errno, 0 when not from a system call
};

// The text of a positive errno value, for messages.
std::string ErrnoText(int err);

// The code for a failed system call or libbpf call, from its errno.
std::string CodeForErrno(int err, const char* fallback);

// libbpf prints through one global callback; while a LibbpfLogCapture is alive on a thread,
// what libbpf prints on that thread is collected here instead of going to stderr.
class LibbpfLogCapture {
 public:
  LibbpfLogCapture();
  ~LibbpfLogCapture();
  LibbpfLogCapture(const LibbpfLogCapture&) = delete;
  LibbpfLogCapture& operator=(const LibbpfLogCapture&) = delete;
  // The last `max_bytes` of the log: the verifier's verdict is at the end.
  std::string Tail(size_t max_bytes = 8192) const;

 private:
  std::string text_;
  std::string* previous_;
};

void InstallLibbpfPrint();

}  // namespace ebpf_leak
