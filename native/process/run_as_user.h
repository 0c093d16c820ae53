// The user a `command` target runs as (trace({ user })): looked up here, in the addon, because
// the launcher is a static executable and glibc's name service modules (libnss_systemd and the
// like) are shared objects it cannot load: getpwuid() or initgroups() there crashes as soon as
// a lookup reaches one of them (any uid missing from /etc/passwd does, and initgroups() always).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace ebpf_leak {

// Adds to `env` (NAME=value strings) what the launcher needs to switch to uid:gid right before
// exec: EBPF_LEAK_EXEC_USER=UID:GID:GROUP,GROUP,... with the user's supplementary groups from
// the user database, and HOME, USER and LOGNAME from its passwd entry, replacing ours. A uid
// with no entry gets just the gid as its group and keeps the environment it was given.
// Blocks on the name service: call it on a worker thread. False with `error` set on failure.
bool AddRunAsUser(uid_t uid, gid_t gid, std::vector<std::string>* env, std::string* error);

}  // namespace ebpf_leak
