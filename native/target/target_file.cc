#include "target/target_file.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "addon/errors.h"

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

namespace ebpf_leak {
namespace {

const char* KindOf(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISDIR(mode)) return "a directory";
  return "not a regular file";
}

int OpenPath(const std::string& path, std::string* error) {
  std::string root, rest;
  if (SplitProcRoot(path, &root, &rest)) {
    int rootfd = open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) {
      *error = "cannot open " + root + ": " + ErrnoText(errno);
      return -1;
    }
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    int fd = static_cast<int>(syscall(SYS_openat2, rootfd, rest.c_str(), &how, sizeof how));
    int err = errno;
    close(rootfd);
    if (fd < 0) {
      *error = err == ENOSYS || err == EPERM
                   ? "cannot open " + path + " safely: openat2() is not available (" + ErrnoText(err) +
                         "), and a path inside another process's root is not followed without it"
                   : "cannot open " + path + ": " + ErrnoText(err) +
                         (err == ENOENT ? " (inside the process's root: symbolic links are resolved there, not on this host)" : "");
      errno = err;
    }
    return fd;
  }
  int fd = open(path.c_str(), O_PATH | O_CLOEXEC);
  if (fd < 0) *error = "cannot open " + path + ": " + ErrnoText(errno);
  return fd;
}

}  // namespace

bool SplitProcRoot(const std::string& path, std::string* root, std::string* rest) {
  static const char kProc[] = "/proc/";
  if (path.compare(0, sizeof kProc - 1, kProc) != 0) return false;
  size_t i = sizeof kProc - 1;
  size_t digits = i;
  while (i < path.size() && path[i] >= '0' && path[i] <= '9') i++;
  if (i == digits) return false;
  static const char kRoot[] = "/root";
  if (path.compare(i, sizeof kRoot - 1, kRoot) != 0) return false;
  size_t after = i + sizeof kRoot - 1;
  if (after != path.size() && path[after] != '/') return false;
  *root = path.substr(0, after);
  size_t r = after;
  while (r < path.size() && path[r] == '/') r++;
  *rest = r < path.size() ? path.substr(r) : ".";
  return true;
}

int OpenTargetFile(const std::string& path, struct stat* st, std::string* error, uint64_t max_bytes) {
  if (path.empty() || path.find('\0') != std::string::npos) {
    *error = "invalid path";
    errno = EINVAL;
    return -1;
  }
  int pathfd = OpenPath(path, error);
  if (pathfd < 0) return -1;
  if (fstat(pathfd, st) != 0) {
    int err = errno;
    *error = "cannot stat " + path + ": " + ErrnoText(err);
    close(pathfd);
    errno = err;
    return -1;
  }
  if (!S_ISREG(st->st_mode)) {
    *error = path + " is " + KindOf(st->st_mode) + ", not a regular file: not opened";
    close(pathfd);
    errno = EINVAL;
    return -1;
  }
  if (static_cast<uint64_t>(st->st_size) > max_bytes) {
    *error = path + " is " + std::to_string(st->st_size) + " bytes, more than the " + std::to_string(max_bytes) +
             " read from one file: not read";
    close(pathfd);
    errno = EFBIG;
    return -1;
  }
  // Reopening the O_PATH fd through /proc/self/fd opens this very inode, whatever its name now.
  std::string self = "/proc/self/fd/" + std::to_string(pathfd);
  int fd = open(self.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  int err = errno;
  close(pathfd);
  if (fd < 0) {
    *error = "cannot open " + path + ": " + ErrnoText(err);
    errno = err;
    return -1;
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

std::string TargetFileErrorCode(int err) {
  // Refused (not merely missing): not a regular file, too large, or no safe way to resolve it.
  if (err == EINVAL || err == EFBIG || err == ELOOP || err == EXDEV || err == ENOSYS) return "ELEAK_UNSAFE_FILE";
  return CodeForErrno(err, "ELEAK_LIB_NOT_FOUND");
}

Napi::Value OpenTargetFileJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString())
    throw Napi::TypeError::New(env, "openTargetFile(path: string, maxBytes?: number)");
  uint64_t max_bytes = kMaxTargetFileBytes;
  if (info.Length() > 1 && info[1].IsNumber()) max_bytes = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
  struct stat st;
  std::string error;
  int fd = OpenTargetFile(info[0].As<Napi::String>().Utf8Value(), &st, &error, max_bytes);
  if (fd < 0) {
    int err = errno;
    throw ToJsError(env, {TargetFileErrorCode(err), error, err});
  }
  return Napi::Number::New(env, fd);
}

}  // namespace ebpf_leak
