#include "process/held_process.h"
#include "addon/errors.h"
#include "addon/queued_promise.h"
#include "process/run_as_user.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "addon/addon_data.h"

namespace ebpf_leak {
namespace {

// Child-side descriptors are moved up here first, so that no dup2() onto 0-3 overwrites another.
constexpr int kFirstHighFd = 10;

void CloseFd(int* fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

class StartWorker : public Napi::AsyncWorker {
 public:
  StartWorker(Napi::Env env, HeldProcess* process, Napi::Object keep_alive)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), process_(process) {
    self_ = Napi::Persistent(keep_alive);
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    std::string error;
    if (!process_->DoStart(&error)) SetError(error);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (!process_->StartWatch()) {
      deferred_.Reject(Napi::Error::New(env, "HeldProcess: closed while starting").Value());
      return;
    }
    Napi::Object result = Napi::Object::New(env);
    result.Set("pid", process_->pid());
    Napi::Array stdio = Napi::Array::New(env, 3);
    for (uint32_t i = 0; i < 3; i++) stdio.Set(i, process_->parent_stdio()[i]);
    result.Set("stdio", stdio);
    deferred_.Resolve(result);
  }

  void OnError(const Napi::Error& e) override {
    process_->ReleaseCallback();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  HeldProcess* process_;
  Napi::ObjectReference self_;
};

std::vector<std::string> StringArray(Napi::Object o, const char* key) {
  std::vector<std::string> out;
  Napi::Value v = o.Get(key);
  if (!v.IsArray()) return out;
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) out.push_back(a.Get(i).ToString().Utf8Value());
  return out;
}

// Everything posix_spawn() needs, closed on every path out.
struct SpawnFds {
  int go[2] = {-1, -1};
  int pipes[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
  int child_side[4] = {-1, -1, -1, -1};  // what becomes the launcher's fds 0-3

  ~SpawnFds() {
    for (int* fd : {&go[0], &go[1]}) CloseFd(fd);
    for (auto& p : pipes)
      for (int* fd : {&p[0], &p[1]}) CloseFd(fd);
    for (int& fd : child_side) CloseFd(&fd);
  }
};

}  // namespace

Napi::Function HeldProcess::Define(Napi::Env env) {
  return DefineClass(env, "HeldProcess",
                     {
                         InstanceMethod<&HeldProcess::Start>("start"),
                         InstanceMethod<&HeldProcess::Release>("release"),
                         InstanceMethod<&HeldProcess::Kill>("kill"),
                         InstanceMethod<&HeldProcess::Ref>("ref"),
                         InstanceMethod<&HeldProcess::Unref>("unref"),
                         InstanceMethod<&HeldProcess::CloseJs>("close"),
                     });
}

// new HeldProcess({ file, argv, env, cwd, stdio }, onExit(code: number | null, signal: number | null))
HeldProcess::HeldProcess(const Napi::CallbackInfo& info) : Napi::ObjectWrap<HeldProcess>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction())
    throw Napi::TypeError::New(env, "new HeldProcess(config: object, onExit: function)");
  Napi::Object c = info[0].As<Napi::Object>();
  config_.file = c.Get("file").ToString().Utf8Value();
  config_.argv = StringArray(c, "argv");
  config_.env = StringArray(c, "env");
  if (c.Get("cwd").IsString()) config_.cwd = c.Get("cwd").ToString().Utf8Value();
  std::string stdio = c.Get("stdio").IsString() ? c.Get("stdio").ToString().Utf8Value() : "inherit";
  config_.stdio = stdio == "pipe" ? StdioMode::kPipe : stdio == "ignore" ? StdioMode::kIgnore : StdioMode::kInherit;
  if (c.Get("user").IsObject()) {
    Napi::Object user = c.Get("user").As<Napi::Object>();
    config_.has_user = true;
    config_.uid = static_cast<uid_t>(user.Get("uid").ToNumber().Int64Value());
    config_.gid = static_cast<gid_t>(user.Get("gid").ToNumber().Int64Value());
  }
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  on_exit_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "ebpf-leak exit", 0, 1);
  addon_data_ = AddonData::From(env);
  addon_data_->held_processes.insert(this);
}

HeldProcess::~HeldProcess() {
  Close();
  addon_data_->held_processes.erase(this);
}

bool HeldProcess::DoStart(std::string* error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) {
    *error = "HeldProcess: closed before start";
    return false;
  }
  auto fail = [&](const char* what, int e) {
    *error = std::string("cannot start ") + config_.file + ": " + what + ": " + ErrnoText(e);
    return false;
  };
  if (config_.has_user && !AddRunAsUser(config_.uid, config_.gid, &config_.env, error)) return false;
  SpawnFds fds;
  if (pipe2(fds.go, O_CLOEXEC)) return fail("pipe", errno);
  fds.child_side[3] = fcntl(fds.go[0], F_DUPFD_CLOEXEC, kFirstHighFd);
  if (fds.child_side[3] < 0) return fail("fcntl", errno);
  if (config_.stdio == StdioMode::kInherit) {
    // Ours may be close-on-exec (Node's are): hand the launcher copies.
    for (int i = 0; i < 3; i++) fds.child_side[i] = fcntl(i, F_DUPFD_CLOEXEC, kFirstHighFd);
  } else if (config_.stdio == StdioMode::kPipe) {
    for (int i = 0; i < 3; i++) {
      if (pipe2(fds.pipes[i], O_CLOEXEC)) return fail("pipe", errno);
      // stdin: the launcher reads; stdout, stderr: it writes.
      int child_end = i == 0 ? 0 : 1;
      fds.child_side[i] = fcntl(fds.pipes[i][child_end], F_DUPFD_CLOEXEC, kFirstHighFd);
      if (fds.child_side[i] < 0) return fail("fcntl", errno);
    }
  }

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  for (int i = 0; i < 4; i++) {
    if (fds.child_side[i] >= 0) {
      posix_spawn_file_actions_adddup2(&actions, fds.child_side[i], i);  // dup2 clears CLOEXEC
    } else if (config_.stdio == StdioMode::kIgnore) {
      posix_spawn_file_actions_addopen(&actions, i, "/dev/null", i == 0 ? O_RDONLY : O_WRONLY, 0);
    }
  }
  if (!config_.cwd.empty()) {
    // Fails only on glibc < 2.29, which has no way to spawn in another directory.
    if (int e = posix_spawn_file_actions_addchdir_np(&actions, config_.cwd.c_str())) {
      posix_spawn_file_actions_destroy(&actions);
      return fail("posix_spawn_file_actions_addchdir_np (cwd needs glibc 2.29)", e);
    }
  }
  // Node ignores SIGPIPE, and an ignored signal stays ignored across exec: every signal goes back
  // to its default, as child_process does, and none is blocked.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  std::vector<char*> argv, envp;
  for (auto& a : config_.argv) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : config_.env) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid;
  int e = posix_spawn(&pid, config_.file.c_str(), &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (e) {
    if (!config_.cwd.empty() && access(config_.cwd.c_str(), X_OK) != 0)
      return fail(("working directory " + config_.cwd).c_str(), errno);
    return fail("posix_spawn", e);
  }

  pid_ = pid;
  pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd_ < 0) {
    int err = errno;
    kill(pid, SIGKILL);
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return fail("pidfd_open (Linux 5.3 or later)", err);
  }
  go_fd_ = fds.go[1];
  fds.go[1] = -1;
  if (config_.stdio == StdioMode::kPipe) {
    for (int i = 0; i < 3; i++) {
      int parent_end = i == 0 ? 1 : 0;
      parent_stdio_[i] = fds.pipes[i][parent_end];
      fds.pipes[i][parent_end] = -1;
    }
  }
  return true;
}

bool HeldProcess::StartWatch() {
  if (closed_) {
    for (int& fd : parent_stdio_) CloseFd(&fd);
    return false;
  }
  watcher_ = std::thread([this] { WatchExit(); });
  return true;
}

void HeldProcess::ReleaseCallback() {
  if (!callback_released_.exchange(true)) on_exit_.Release();
}

// Waits for the exit or close(); reaps the child and reports its status.
void HeldProcess::WatchExit() {
  pthread_setname_np(pthread_self(), "ebpf-leak-wait");
  struct pollfd fds[2] = {{pidfd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
  for (;;) {
    int n = poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (fds[1].revents & POLLIN)) return;
    if (fds[0].revents) break;
  }
  siginfo_t si{};
  while (waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_), &si, WEXITED) < 0 &&
         errno == EINTR) {
  }
  exited_ = true;
  int code = si.si_code == CLD_EXITED ? si.si_status : -1;
  int signal = si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED ? si.si_status : -1;
  on_exit_.NonBlockingCall([code, signal](Napi::Env env, Napi::Function callback) {
    if (env == nullptr || callback.IsEmpty()) return;
    auto orNull = [&](int v) { return v < 0 ? env.Null() : Napi::Number::New(env, v); };
    callback.Call({orNull(code), orNull(signal)});
  });
  ReleaseCallback();
}

void HeldProcess::Close() {
  if (closed_.exchange(true)) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (watcher_.joinable()) {
    uint64_t one = 1;
    ssize_t ignored = write(stop_fd_, &one, sizeof one);
    (void)ignored;
    watcher_.join();
  }
  // Not released yet: the launcher reads EOF on its fd 3 and exits without running the program.
  CloseFd(&go_fd_);
  CloseFd(&pidfd_);
  CloseFd(&stop_fd_);
  ReleaseCallback();
}

Napi::Value HeldProcess::Start(const Napi::CallbackInfo& info) {
  // Set here, on the JS thread: a second start() while the first one's worker runs must not spawn.
  if (started_ || closed_) throw Napi::Error::New(info.Env(), "HeldProcess: start() once, before close()");
  started_ = true;
  return QueueForPromise(new StartWorker(info.Env(), this, info.This().As<Napi::Object>()));
}

Napi::Value HeldProcess::Release(const Napi::CallbackInfo& info) {
  if (go_fd_ < 0) return Napi::Boolean::New(info.Env(), false);
  ssize_t n;
  do n = write(go_fd_, "g", 1);
  while (n < 0 && errno == EINTR);
  CloseFd(&go_fd_);
  return Napi::Boolean::New(info.Env(), n == 1);
}

Napi::Value HeldProcess::Kill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "kill(signal: number)");
  int signal = info[0].As<Napi::Number>().Int32Value();
  if (pidfd_ < 0 || exited_) return Napi::Boolean::New(env, false);
  // The pidfd names this process even after its pid is reaped and reused.
  long r = syscall(SYS_pidfd_send_signal, pidfd_, signal, nullptr, 0);
  return Napi::Boolean::New(env, r == 0);
}

void HeldProcess::Ref(const Napi::CallbackInfo& info) {
  if (!callback_released_) on_exit_.Ref(info.Env());
}

void HeldProcess::Unref(const Napi::CallbackInfo& info) {
  if (!callback_released_) on_exit_.Unref(info.Env());
}

void HeldProcess::CloseJs(const Napi::CallbackInfo&) { Close(); }

}  // namespace ebpf_leak
