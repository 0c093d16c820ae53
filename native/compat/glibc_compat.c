/* Keeps the prebuilt addon loadable on glibc 2.28 (Debian 10, Ubuntu 20.04, RHEL 8) although it is
 * built on Debian 12's glibc 2.36 (cmake/portable.cmake). Linked only into EBPF_LEAK_STATIC builds.
 *
 * A reference to a glibc function binds to the newest version the build's glibc defines. Every
 * function whose default version is newer than GLIBC_2.28 is renamed at link time (ld --wrap=NAME
 * sends references to __wrap_NAME) to a function here that calls the same function bound, with
 * .symver, to the version older glibcs define. Most moved from libpthread or libdl into libc in
 * 2.34 and keep their old version there as an alias; a process running node has both libraries
 * loaded on older glibcs. Functions older glibcs do not have at all are looked up when called. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <spawn.h>
#include <stddef.h>
#include <sys/random.h>
#include <sys/stat.h>

#define COMPAT_VERSION(name, version) __asm__(".symver ebpf_leak_old_" #name ", " #name "@" version)

/* The versions older glibcs define, per architecture: a function keeps the version of the first
 * release that had it, and arm64's first glibc was 2.17. STAT_VER is the struct stat version
 * __fxstat takes. */
#if defined(__x86_64__)
#define GLIBC_BASE "GLIBC_2.2.5"
#define GLIBC_SETNAME "GLIBC_2.12"
#define GLIBC_COND "GLIBC_2.3.2"
#define STAT_VER 1
#elif defined(__aarch64__)
#define GLIBC_BASE "GLIBC_2.17"
#define GLIBC_SETNAME "GLIBC_2.17"
#define GLIBC_COND "GLIBC_2.17"
#define STAT_VER 0
#else
#error "glibc_compat.c knows the glibc versions of x86-64 and arm64 only"
#endif

/* libstdc++'s test for "no thread started yet" (2.32): always false here, so it always takes the
 * atomic paths, which is correct in any process. */
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;

#define FORWARD(ret, name, version, params, args)        \
	COMPAT_VERSION(name, version);                   \
	extern ret ebpf_leak_old_##name params;          \
	ret __wrap_##name params;                        \
	ret __wrap_##name params { return ebpf_leak_old_##name args; }

FORWARD(int, pthread_create, GLIBC_BASE,
	(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg), (t, a, fn, arg))
FORWARD(int, pthread_detach, GLIBC_BASE, (pthread_t t), (t))
FORWARD(int, pthread_join, GLIBC_BASE, (pthread_t t, void **ret), (t, ret))
FORWARD(int, pthread_once, GLIBC_BASE, (pthread_once_t *o, void (*fn)(void)), (o, fn))
FORWARD(int, __pthread_key_create, GLIBC_BASE, (pthread_key_t *k, void (*d)(void *)), (k, d))
FORWARD(int, pthread_setname_np, GLIBC_SETNAME, (pthread_t t, const char *name), (t, name))
FORWARD(int, pthread_rwlock_init, GLIBC_BASE,
	(pthread_rwlock_t *l, const pthread_rwlockattr_t *a), (l, a))
FORWARD(int, pthread_rwlock_destroy, GLIBC_BASE, (pthread_rwlock_t *l), (l))
FORWARD(int, pthread_rwlock_rdlock, GLIBC_BASE, (pthread_rwlock_t *l), (l))
FORWARD(int, pthread_rwlock_tryrdlock, GLIBC_BASE, (pthread_rwlock_t *l), (l))
FORWARD(int, pthread_rwlock_wrlock, GLIBC_BASE, (pthread_rwlock_t *l), (l))
FORWARD(int, pthread_rwlock_unlock, GLIBC_BASE, (pthread_rwlock_t *l), (l))
FORWARD(int, pthread_key_create, GLIBC_BASE, (pthread_key_t *k, void (*d)(void *)), (k, d))
FORWARD(int, pthread_key_delete, GLIBC_BASE, (pthread_key_t k), (k))
FORWARD(void *, pthread_getspecific, GLIBC_BASE, (pthread_key_t k), (k))
FORWARD(int, pthread_setspecific, GLIBC_BASE, (pthread_key_t k, const void *v), (k, v))
FORWARD(void *, dlopen, GLIBC_BASE, (const char *file, int mode), (file, mode))
FORWARD(void *, dlsym, GLIBC_BASE, (void *handle, const char *name), (handle, name))
FORWARD(int, dlclose, GLIBC_BASE, (void *handle), (handle))

/* fstat became a symbol of its own in 2.33; before, it was an inline call of __fxstat with the
 * version of struct stat. */
COMPAT_VERSION(__fxstat, GLIBC_BASE);
COMPAT_VERSION(__fxstat64, GLIBC_BASE);
extern int ebpf_leak_old___fxstat(int ver, int fd, struct stat *st);
extern int ebpf_leak_old___fxstat64(int ver, int fd, struct stat64 *st);
int __wrap_fstat(int fd, struct stat *st);
int __wrap_fstat64(int fd, struct stat64 *st);
int __wrap_fstat(int fd, struct stat *st) { return ebpf_leak_old___fxstat(STAT_VER, fd, st); }
int __wrap_fstat64(int fd, struct stat64 *st) { return ebpf_leak_old___fxstat64(STAT_VER, fd, st); }

/* std::random_device's default source (2.36); getrandom() is 2.25. */
unsigned int __wrap_arc4random(void);
unsigned int __wrap_arc4random(void)
{
	unsigned int value;
	while (getrandom(&value, sizeof(value), 0) != (ssize_t)sizeof(value))
		;
	return value;
}

/* 2.29; on older glibcs the spawn fails with ENOSYS (the caller reports it) instead of running the
 * program in the wrong directory. */
typedef int addchdir_fn(posix_spawn_file_actions_t *, const char *);
int __wrap_posix_spawn_file_actions_addchdir_np(posix_spawn_file_actions_t *actions, const char *path);
int __wrap_posix_spawn_file_actions_addchdir_np(posix_spawn_file_actions_t *actions, const char *path)
{
	addchdir_fn *real = (addchdir_fn *)__wrap_dlsym(RTLD_DEFAULT, "posix_spawn_file_actions_addchdir_np");
	return real ? real(actions, path) : ENOSYS;
}

/* pthread_cond_clockwait (2.30), which libstdc++'s condition_variable uses for steady-clock
 * waits, has no older version: the wait is made with pthread_cond_timedwait on the realtime
 * clock, for the same time left. A jump of the realtime clock during the wait shortens or
 * lengthens it, as it did for every wait before glibc 2.30. */
COMPAT_VERSION(pthread_cond_timedwait, GLIBC_COND);
extern int ebpf_leak_old_pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *abstime);
int __wrap_pthread_cond_clockwait(pthread_cond_t *c, pthread_mutex_t *m, clockid_t clock, const struct timespec *abstime);
int __wrap_pthread_cond_clockwait(pthread_cond_t *c, pthread_mutex_t *m, clockid_t clock, const struct timespec *abstime)
{
	struct timespec now, real, until;
	long long left_ns;

	if (clock == CLOCK_REALTIME)
		return ebpf_leak_old_pthread_cond_timedwait(c, m, abstime);
	clock_gettime(clock, &now);
	clock_gettime(CLOCK_REALTIME, &real);
	left_ns = (long long)(abstime->tv_sec - now.tv_sec) * 1000000000LL + (abstime->tv_nsec - now.tv_nsec);
	if (left_ns < 0)
		left_ns = 0;
	left_ns += real.tv_nsec;
	until.tv_sec = real.tv_sec + left_ns / 1000000000LL;
	until.tv_nsec = left_ns % 1000000000LL;
	return ebpf_leak_old_pthread_cond_timedwait(c, m, &until);
}
