#include "process/run_as_user.h"
#include "addon/errors.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>

namespace ebpf_leak {
namespace {

void SetVariable(std::vector<std::string>* env, const std::string& name, const std::string& value) {
  const std::string prefix = name + "=";
  for (auto& e : *env) {
    if (e.compare(0, prefix.size(), prefix) == 0) {
      e = prefix + value;
      return;
    }
  }
  env->push_back(prefix + value);
}

}  // namespace

bool AddRunAsUser(uid_t uid, gid_t gid, std::vector<std::string>* env, std::string* error) {
  struct passwd pw {};
  struct passwd* found = nullptr;
  std::vector<char> buf(16384);
  int e;
  while ((e = getpwuid_r(uid, &pw, buf.data(), buf.size(), &found)) == ERANGE && buf.size() < (1u << 24))
    buf.resize(buf.size() * 2);
  if (e != 0 && e != ENOENT && e != ESRCH && e != EBADF && e != EPERM) {
    *error = "cannot look up uid " + std::to_string(uid) + " in the user database: " + ErrnoText(e);
    return false;
  }
  std::vector<gid_t> groups{gid};
  if (found) {
    // getgrouplist() puts `gid` first, and says how many there are when the array is too small.
    int count = 32;
    for (;;) {
      groups.resize(static_cast<size_t>(count));
      int n = count;
      if (getgrouplist(pw.pw_name, gid, groups.data(), &n) >= 0) {
        groups.resize(static_cast<size_t>(n));
        break;
      }
      if (n <= count) n = count * 2;
      if (n > 65536) {
        *error = "user " + std::string(pw.pw_name) + " is in more groups than the kernel allows";
        return false;
      }
      count = n;
    }
    SetVariable(env, "HOME", pw.pw_dir);
    SetVariable(env, "USER", pw.pw_name);
    SetVariable(env, "LOGNAME", pw.pw_name);
  }
  std::string spec = std::to_string(uid) + ":" + std::to_string(gid) + ":";
  for (size_t i = 0; i < groups.size(); i++) spec += (i ? "," : "") + std::to_string(groups[i]);
  SetVariable(env, "EBPF_LEAK_EXEC_USER", spec);
  return true;
}

}  // namespace ebpf_leak
