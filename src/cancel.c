/* cancel.c - cancellation points and blocking fd waits: who runs this
 * code (pt_self_ctx), whether it was cancelled, the "cancelled" error,
 * and the poll waits that end on cancel and on Ctrl-C without a timer
 * (futex waits are wait.c's). */
#include "pt.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

__thread pt_ctx *pt_self_ctx;

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

/* SIGINT stays blocked from the check of the count to the sleep, and
   ppoll unblocks it atomically (the mask it had before: a host that
   blocks SIGINT keeps it blocked), so a Ctrl-C that comes after the check
   still ends the sleep: no timer. */
int pt_poll_wait(struct pollfd *p, int n, double deadline) {
  pt_ctx *c = pt_self_ctx;
  int cfd = (c && c->cancel_fd >= 0) ? c->cancel_fd : -1;
  int watched = pt_interrupt_watched();
  sigset_t intr, old;
  sigemptyset(&intr);
  sigaddset(&intr, SIGINT);
  for (;;) {
    struct timespec ts, *tsp = NULL;
    int i, r, e;
    if (pt_cancel_requested()) return -2;
    for (i = 0; i < n; i++) p[i].revents = 0;
    p[n].fd = cfd; p[n].events = POLLIN; p[n].revents = 0;
    if (watched) pthread_sigmask(SIG_BLOCK, &intr, &old);
    if (pt_interrupted()) {              /* Ctrl-C: see pt_raise_cancelled */
      if (watched) pthread_sigmask(SIG_SETMASK, &old, NULL);
      return -2;
    }
    if (deadline >= 0) {
      double left = deadline - pt_clock_now();
      if (left < 0) left = 0;
      ts.tv_sec = (time_t)left;
      ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
      tsp = &ts;
    }
    r = ppoll(p, (nfds_t)(n + 1), tsp, watched ? &old : NULL);
    e = errno;
    if (watched) pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r < 0) {
      if (e == EINTR) continue;
      errno = e;
      return -1;
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
