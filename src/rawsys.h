/* rawsys.h - system calls a new child makes on its way from the fork to
 * its exit, without libc's wrappers.  A child maps no page of libc's code
 * until it runs there, and each 64 KiB window it touches is a page fault
 * (some 2-4 us here): fcntl, sigemptyset, sigaction, pthread_sigmask,
 * close, write and __errno_location (which a wrapper calls on failure)
 * each sat in one.  The call is inlined into the caller (PT_AFTER_FORK
 * code, .text.hot), returns the kernel's answer (-errno on failure) and
 * never touches errno.  Elsewhere than x86-64 it is libc's syscall(). */
#ifndef PT_RAWSYS_H
#define PT_RAWSYS_H

#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__linux__)
static inline long pt_rawsys(long n, long a, long b, long c, long d) {
  long r;
  register long r10 __asm__("r10") = d;
  __asm__ volatile("syscall"
                   : "=a"(r)
                   : "0"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                   : "rcx", "r11", "memory");
  return r;
}
#define PT_RAWSYS_NATIVE 1
#else
static inline long pt_rawsys(long n, long a, long b, long c, long d) {
  long r = syscall(n, a, b, c, d);
  return r < 0 ? -errno : r;
}
#define PT_RAWSYS_NATIVE 0
#endif

static inline long pt_raw_close(int fd) { return pt_rawsys(SYS_close, fd, 0, 0, 0); }
static inline long pt_raw_fcntl(int fd, int cmd, long arg) {
  return pt_rawsys(SYS_fcntl, fd, cmd, arg, 0);
}
static inline long pt_raw_write(int fd, const void *p, size_t n) {
  return pt_rawsys(SYS_write, fd, (long)p, (long)n, 0);
}

/* The signal mask as the kernel takes it: one word of 64 signals. */
static inline unsigned long pt_raw_sigbit(int sig) { return 1UL << (sig - 1); }
/* rt_sigprocmask(how, {bits}, NULL) */
static inline long pt_raw_sigmask(int how, unsigned long bits) {
  return pt_rawsys(SYS_rt_sigprocmask, how, (long)&bits, 0, 8);
}

#endif
