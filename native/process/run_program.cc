#include "process/run_program.h"
#include "addon/errors.h"
#include "addon/queued_promise.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace ebpf_leak {
namespace {

class RunProgramWorker : public Napi::AsyncWorker {
 public:
  RunProgramWorker(Napi::Env env, std::string file, std::vector<std::string> argv,
                   std::vector<std::string> envp, int timeout_ms)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        file_(std::move(file)),
        argv_(std::move(argv)),
        envp_(std::move(envp)),
        timeout_ms_(timeout_ms) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) return Fail("pipe", errno, out, err);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, err[1], 2);
    std::vector<char*> argv, envp;
    for (auto& a : argv_) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : envp_) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_t pid;
    int e = posix_spawn(&pid, file_.c_str(), &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    close(err[1]);
    out[1] = err[1] = -1;
    if (e) return Fail("posix_spawn", e, out, err);

    Collect(pid, out[0], err[0]);
    close(out[0]);
    close(err[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status)) exit_status_ = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) signal_ = WTERMSIG(status);
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object result = Napi::Object::New(env);
    result.Set("status", exit_status_ >= 0 ? Napi::Value(Napi::Number::New(env, exit_status_)) : env.Null());
    result.Set("signal", signal_ >= 0 ? Napi::Value(Napi::Number::New(env, signal_)) : env.Null());
    result.Set("stdout", Napi::String::New(env, stdout_));
    result.Set("stderr", Napi::String::New(env, stderr_));
    deferred_.Resolve(result);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  void Fail(const char* what, int e, int* out, int* err) {
    for (int fd : {out[0], out[1], err[0], err[1]})
      if (fd >= 0) close(fd);
    SetError(std::string("cannot run ") + file_ + ": " + what + ": " + ErrnoText(e));
  }

  // Reads both pipes until they close (the program and whatever it started exited), or kills the
  // program at the deadline.
  void Collect(pid_t pid, int out, int err) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
    struct pollfd fds[2] = {{out, POLLIN, 0}, {err, POLLIN, 0}};
    std::string* sinks[2] = {&stdout_, &stderr_};
    int open_fds = 2;
    bool killed = false;
    char buf[16384];
    while (open_fds > 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      deadline - std::chrono::steady_clock::now())
                      .count();
      if (left <= 0 && !killed) {
        kill(pid, SIGKILL);
        killed = true;
      }
      int n = poll(fds, 2, killed ? 1000 : static_cast<int>(left));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 && killed) break;  // a grandchild keeps the pipe open: stop reading
      for (int i = 0; i < 2; i++) {
        if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t got = read(fds[i].fd, buf, sizeof(buf));
        if (got > 0) {
          sinks[i]->append(buf, static_cast<size_t>(got));
        } else if (got == 0 || errno != EINTR) {
          fds[i].fd = -1;
          open_fds--;
        }
      }
    }
  }

  Napi::Promise::Deferred deferred_;
  std::string file_;
  std::vector<std::string> argv_, envp_;
  int timeout_ms_;
  int exit_status_ = -1;
  int signal_ = -1;
  std::string stdout_, stderr_;
};

std::vector<std::string> StringArray(const Napi::Value& v) {
  std::vector<std::string> out;
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) out.push_back(a.Get(i).As<Napi::String>().Utf8Value());
  return out;
}

}  // namespace

Napi::Value RunProgram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsArray() || !info[2].IsArray() ||
      !info[3].IsNumber())
    throw Napi::TypeError::New(env, "runProgram(file: string, args: string[], env: string[], timeoutMs: number)");
  return QueueForPromise(new RunProgramWorker(env, info[0].As<Napi::String>().Utf8Value(), StringArray(info[1]),
                                      StringArray(info[2]), info[3].As<Napi::Number>().Int32Value()));
}

}  // namespace ebpf_leak
