// The program a `command` trace starts: our launcher (native/process/launcher.c), held before it execs
// the program until the probes are attached.
//
// Not child_process: spawn() forks the whole Node process on the JS thread, and copying its page
// tables held the event loop 12-16 ms at 430 MB of RSS and 20-24 ms at 780 MB on the bench
// machine, in every trace() of a command. posix_spawn() (glibc: clone with CLONE_VM |
// CLONE_VFORK) copies none, and runs here on a worker thread. The exit is read from a pidfd by a
// thread of ours, which reaps the child: libuv reaps only the children it started itself.
//
// JS: new HeldProcess({ file, argv, env, cwd, stdio, user?: { uid, gid } }, onExit(code, signal))
//   start()        => Promise<{ pid, stdio: [fd, fd, fd] }>  (the parent's pipe ends; -1 if none)
//   release()      the launcher execs the program; false when it is already gone
//   kill(signal)   pidfd_send_signal(); false once the process has exited
//   ref() / unref()  whether the pending exit keeps the event loop alive (as ChildProcess)
//   close()        idempotent; also run by the destructor and the env cleanup hook. Stops the
//                  exit watch; a launcher not yet released then exits without running the program.
#pragma once

#include <napi.h>
#include <sys/types.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ebpf_leak {

struct AddonData;

enum class StdioMode { kInherit, kPipe, kIgnore };

struct HeldProcessConfig {
  std::string file;  // the launcher
  std::vector<std::string> argv, env;
  std::string cwd;  // empty: ours
  StdioMode stdio = StdioMode::kInherit;
  bool has_user = false;  // run the program as uid:gid (native/process/run_as_user.h)
  uid_t uid = 0;
  gid_t gid = 0;
};

class HeldProcess : public Napi::ObjectWrap<HeldProcess> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit HeldProcess(const Napi::CallbackInfo& info);
  ~HeldProcess() override;

  void Close();

  // On a worker thread (start()): spawns the launcher. False with `error` set on failure.
  bool DoStart(std::string* error);
  // On the JS thread, once started: watches for the exit. False when close() came first (the
  // launcher then exits on its own).
  bool StartWatch();
  // After a failed start: nothing will ever call onExit.
  void ReleaseCallback();

  int pid() const { return pid_; }
  const int* parent_stdio() const { return parent_stdio_; }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Release(const Napi::CallbackInfo& info);
  Napi::Value Kill(const Napi::CallbackInfo& info);
  void Ref(const Napi::CallbackInfo& info);
  void Unref(const Napi::CallbackInfo& info);
  void CloseJs(const Napi::CallbackInfo& info);
  void WatchExit();

  HeldProcessConfig config_;
  AddonData* addon_data_ = nullptr;
  Napi::ThreadSafeFunction on_exit_;
  std::atomic<bool> callback_released_{false};
  std::atomic<bool> exited_{false};
  std::atomic<bool> closed_{false};
  std::mutex mu_;  // held by start()'s worker: close() waits for it
  bool started_ = false;  // start() was called (JS thread only)
  int pid_ = -1;
  int pidfd_ = -1;
  int go_fd_ = -1;     // write end of the launcher's fd 3
  int stop_fd_ = -1;   // eventfd: close() wakes the watch
  int parent_stdio_[3] = {-1, -1, -1};
  std::thread watcher_;
};

}  // namespace ebpf_leak
