/* cancel.c - cancellation points and blocking fd waits: who runs this
 * code (pt_self_ctx), whether it was cancelled, the "cancelled" error,
 * and the poll waits that end on cancel and on Ctrl-C without a timer
 * (futex waits are wait.c's). */
#include "pt.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

PT_TLS pt_ctx *pt_self_ctx;

int pt_cancel_requested(void) {
  pt_ctx *c = pt_self_ctx;
  return c && c->cancel && __atomic_load_n(c->cancel, __ATOMIC_ACQUIRE);
}

int pt_raise_cancelled(lua_State *L) {
  if (pt_take_interrupt()) {               /* not cancelled: interrupted */
    lua_pushnil(L);
    lua_pushliteral(L, "interrupted");
    return 2;
  }
  pt_cancel_arm(L);                 /* no pcall can swallow it from here on */
  lua_pushstring(L, PT_CANCELLED_MSG);
  return lua_error(L);
}

/* ---- Ctrl-C's wake-up ------------------------------------------------------

   A wait of the thread that Ctrl-C interrupts polls, beside its fds, an
   eventfd that the SIGINT handler writes after it counts (lifecycle.c), so
   a SIGINT that lands between the wait's check of the count and its sleep
   still ends the sleep: no timer, and no signal-mask change around every
   poll (two system calls a wait).  A SIGINT taken by any thread of the
   process wakes it too.  The fd is made when the handler is installed
   (before any wait).  A forked child closes the copy it inherits in the
   fork's child handler, before any code of its own runs -- the one moment
   the number is surely still ours: later the child's code may have closed
   it and reused it for a file or a socket, which the handler's write would
   corrupt -- and makes its own at its first wait (most children never
   wait), at whatever number the kernel gives, which it publishes for the
   handler (atomic: the handler may run at any moment, in any thread).  Until then the child's handler
   writes nothing; the count alone says a SIGINT came, and the first wait
   makes its fd before it looks at the count.  A parent and a child that
   both waited on one fd could read away each other's wake-up, hence the
   child's own.  Where that fails (no fd left), this process's waits fall
   back to blocking SIGINT from the check to ppoll, which unblocks it
   atomically. */
static int intr_fd = -1;     /* atomic: the eventfd the handler writes, or -1 */
static int intr_state;       /* INTR_NONE, INTR_OWN, INTR_CHILD, INTR_FAILED */
enum { INTR_NONE, INTR_OWN, INTR_CHILD, INTR_FAILED };

PT_AFTER_FORK static void intr_after_fork(void) {
  int fd = intr_fd;
  if (intr_state != INTR_OWN) return;
  intr_state = INTR_CHILD;
  __atomic_store_n(&intr_fd, -1, __ATOMIC_SEQ_CST);  /* before the close */
  pt_close(fd);
}

/* The wake-up fd this process's waits may use, made at a child's first
   wait; -1: none (only the thread Ctrl-C interrupts calls it). */
static int intr_wait_fd(void) {
  int fd;
  if (intr_state == INTR_OWN) return intr_fd;
  if (intr_state != INTR_CHILD) return -1;
  intr_state = INTR_FAILED;
  if ((fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) return -1;
  __atomic_store_n(&intr_fd, fd, __ATOMIC_SEQ_CST);
  intr_state = INTR_OWN;
  return fd;
}

void pt_interrupt_fd_open(void) {
  int fd;
  if (intr_state != INTR_NONE) return;
  fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return;                      /* the waits block SIGINT instead */
  __atomic_store_n(&intr_fd, fd, __ATOMIC_SEQ_CST);
  intr_state = INTR_OWN;
  pt_atfork_child(intr_after_fork);
}

void pt_interrupt_wake(void) {             /* async-signal-safe */
  int fd = __atomic_load_n(&intr_fd, __ATOMIC_SEQ_CST);
  uint64_t one = 1;
  if (fd >= 0 && write(fd, &one, sizeof one) < 0) { /* full: readable anyway */ }
}

/* The wait's extra slot p[n]: the thread worker's cancel eventfd, or, in
   the thread Ctrl-C interrupts, the wake-up eventfd (drained when it
   fires; the count, checked before every sleep, says whether it was a
   new SIGINT).  mask: SIGINT is watched but there is no wake-up fd. */
int pt_poll_wait(struct pollfd *p, int n, double deadline) {
  pt_ctx *c = pt_self_ctx;
  int cfd = (c && c->cancel_fd >= 0) ? c->cancel_fd : -1;
  int watched = pt_interrupt_watched();
  int ifd = watched && cfd < 0 ? intr_wait_fd() : -1;
  int mask = watched && ifd < 0;
  sigset_t intr, old;
  sigemptyset(&intr);
  sigaddset(&intr, SIGINT);
  for (;;) {
    struct timespec ts, *tsp = NULL;
    int i, r, e;
    if (pt_cancel_requested()) return -2;
    for (i = 0; i < n; i++) p[i].revents = 0;
    p[n].fd = cfd >= 0 ? cfd : ifd; p[n].events = POLLIN; p[n].revents = 0;
    if (mask) pthread_sigmask(SIG_BLOCK, &intr, &old);
    if (pt_interrupted()) {              /* Ctrl-C: see pt_raise_cancelled */
      if (mask) pthread_sigmask(SIG_SETMASK, &old, NULL);
      return -2;
    }
    if (deadline >= 0) {
      double left = deadline - pt_clock_now();
      if (left < 0) left = 0;
      ts.tv_sec = (time_t)left;
      ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
      tsp = &ts;
    }
    r = ppoll(p, (nfds_t)(n + 1), tsp, mask ? &old : NULL);
    e = errno;
    if (mask) pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r < 0) {
      if (e == EINTR) continue;
      errno = e;
      return -1;
    }
    if (ifd >= 0 && p[n].revents) {      /* drained first, then the count */
      uint64_t v;
      if (read(ifd, &v, sizeof v) < 0) { /* EAGAIN: drained already */ }
      continue;
    }
    for (i = 0; i < n; i++)
      if (p[i].revents) return i;          /* ready, hung up or error: let the caller see */
    if (p[n].revents || pt_cancel_requested()) return -2;
    if (r == 0 && deadline >= 0 && pt_clock_now() >= deadline) return -3;
  }
}

int pt_wait_fds(const int *fds, int n, short events, double timeout) {
  struct pollfd p[17];
  int i;
  if (n > 16) { errno = EINVAL; return -1; }
  for (i = 0; i < n; i++) { p[i].fd = fds[i]; p[i].events = events; }
  return pt_poll_wait(p, n, timeout < 0 ? -1 : pt_clock_now() + timeout);
}

int pt_wait_fd(int fd, short events, double timeout) {
  int r = pt_wait_fds(&fd, 1, events, timeout);
  return r == 0 ? 1 : r == -3 ? 0 : r;
}
