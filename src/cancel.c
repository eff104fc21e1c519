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
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
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
static int rd_armed;         /* atomic: the main thread is in rd_call (below) */

PT_AFTER_FORK static void intr_after_fork(void) {
  int fd = intr_fd;
  __atomic_store_n(&rd_armed, 0, __ATOMIC_RELAXED);  /* the forking thread was not in it */
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

static void rd_wake(void);

void pt_interrupt_wake(void) {             /* async-signal-safe */
  int fd = __atomic_load_n(&intr_fd, __ATOMIC_SEQ_CST);
  uint64_t one = 1;
  if (fd >= 0 && write(fd, &one, sizeof one) < 0) { /* full: readable anyway */ }
  rd_wake();
}

/* ---- a read that Ctrl-C ends, with no poll before it ----------------------

   The thread Ctrl-C interrupts (the process's main thread) would have to
   poll before each blocking read (the read fd and the wake-up eventfd
   above) to stay interruptible: two system calls where one would do.
   Instead it blocks in read() itself, through rd_call: a few instructions
   that compare the SIGINT count (the futex word of pt_interrupt_word) with
   the value the caller acted on, then enter read().  A SIGINT handled on
   that thread while it sleeps in read() ends the read with EINTR (the
   handler has no SA_RESTART).  One that lands from the comparison to the
   system call instruction would not, nor one handled by another thread:
   so the SIGINT handler, through pt_interrupt_wake, while rd_armed, sends
   the main thread a wake-up signal (tgkill), whose handler looks where the
   thread was stopped: between rd_begin and rd_end (the read not yet
   entered, or about to be restarted), it makes it go on at rd_cancel,
   which returns -EINTR as an interrupted read would; anywhere else the
   read is interrupted already, or done.  (musl's thread cancellation
   works the same way.)  The wake-up signal: the highest real-time signal
   without a handler, SIGRTMAX down to SIGRTMIN+7, taken at the first such
   read; with SA_RESTART, so that one that comes late only restarts
   whatever call the thread is in.  No such signal, or not x86-64: the
   caller polls first, as before. */
#if defined(__x86_64__) && defined(__linux__)
#define RD_CALL 1
/* long rd_call(int fd, void *buf, size_t n, const uint32_t *word, uint32_t v) */
__asm__(".text\n"
        ".type pt_rd_call, @function\n"
        ".globl pt_rd_call\n.hidden pt_rd_call\n"
        ".globl pt_rd_begin\n.hidden pt_rd_begin\n"
        ".globl pt_rd_end\n.hidden pt_rd_end\n"
        ".globl pt_rd_cancel\n.hidden pt_rd_cancel\n"
        "pt_rd_call:\n"
        "pt_rd_begin:\n"
        "  movl (%rcx), %eax\n"
        "  cmpl %r8d, %eax\n"
        "  jne pt_rd_cancel\n"
        "  movl $0, %eax\n"                   /* SYS_read */
        "  syscall\n"
        "pt_rd_end:\n"
        "  ret\n"
        "pt_rd_cancel:\n"
        "  movq $-4, %rax\n"                  /* -EINTR */
        "  ret\n"
        ".size pt_rd_call, .-pt_rd_call\n");
#define RD_HIDDEN __attribute__((visibility("hidden")))
RD_HIDDEN long pt_rd_call(int fd, void *buf, size_t n, const uint32_t *word, uint32_t v);
extern RD_HIDDEN const char pt_rd_begin[], pt_rd_end[], pt_rd_cancel[];

static int rd_sig;           /* atomic: the wake-up signal; 0 none yet, -1 none to be had */
static int rd_wanted = -1;   /* atomic: pt.configure's recv_signal (0: none), or -1 */
static int rd_decided;       /* atomic: rd_install ran */

static void rd_on_wake(int sig, siginfo_t *si, void *ctx) {
  ucontext_t *uc = (ucontext_t *)ctx;
  greg_t pc = uc->uc_mcontext.gregs[REG_RIP];
  (void)sig; (void)si;
  if (pc >= (greg_t)(uintptr_t)pt_rd_begin && pc < (greg_t)(uintptr_t)pt_rd_end)
    uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(uintptr_t)pt_rd_cancel;
}

/* Nobody has a handler on sig (as thread.c's signal_free). */
static int rd_free(int sig) {
  struct sigaction old;
  return sigaction(sig, NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
         (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN);
}

static int rd_take(int sig) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = rd_on_wake;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset(&sa.sa_mask);
  if (!rd_free(sig) || sigaction(sig, &sa, NULL) != 0) return 0;
  __atomic_store_n(&rd_sig, sig, __ATOMIC_SEQ_CST);
  return 1;
}

static void rd_install(void) {
  int sig, want = __atomic_load_n(&rd_wanted, __ATOMIC_ACQUIRE);
  __atomic_store_n(&rd_decided, 1, __ATOMIC_RELEASE);
  if (want > 0 && rd_take(want)) return;
  if (want < 0)
    for (sig = SIGRTMAX; sig >= SIGRTMIN + 7; sig--)
      if (rd_take(sig)) return;
  __atomic_store_n(&rd_sig, -1, __ATOMIC_SEQ_CST);
}

const char *pt_set_recv_signal(double n) {
  int sig = (n >= 0 && n <= SIGRTMAX) ? (int)n : -1;
  if (sig != n || (sig != 0 && sig < SIGRTMIN))
    return "recv_signal must be a real-time signal number (SIGRTMIN to SIGRTMAX) or 0 for none";
  if (__atomic_load_n(&rd_decided, __ATOMIC_ACQUIRE)) {
    int had = __atomic_load_n(&rd_sig, __ATOMIC_ACQUIRE);
    return sig == (had < 0 ? 0 : had) ? NULL
           : "recv_signal: a pipe recv has taken its signal already; configure it before first use";
  }
  if (sig && !rd_free(sig)) return "recv_signal: the program has a handler on that signal";
  __atomic_store_n(&rd_wanted, sig, __ATOMIC_RELEASE);
  return NULL;
}

/* From the SIGINT handler.  When that handler runs on the main thread, the
   wake-up signal must wait for it to return (or it would find the thread
   in the handler, not where it was stopped): blocked here, in the
   handler's mask, which the return sets back. */
static void rd_wake(void) {                /* async-signal-safe */
  if (__atomic_load_n(&rd_armed, __ATOMIC_SEQ_CST)) {
    int sig = __atomic_load_n(&rd_sig, __ATOMIC_SEQ_CST);
    pid_t pid = getpid();                  /* the main thread's tid */
    sigset_t ws;
    sigemptyset(&ws);
    sigaddset(&ws, sig);
    sigprocmask(SIG_BLOCK, &ws, NULL);
    syscall(SYS_tgkill, pid, pid, sig);
  }
}

ssize_t pt_read_interruptible(int fd, void *buf, size_t n) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pt_ctx *c = pt_self_ctx;
  const uint32_t *word;
  uint32_t v = 0;
  long r;
  if ((c && c->cancel_fd >= 0) || !(word = pt_interrupt_word(&v))) return -2;
  pthread_once(&once, rd_install);
  if (__atomic_load_n(&rd_sig, __ATOMIC_SEQ_CST) <= 0) return -2;
  __atomic_store_n(&rd_armed, 1, __ATOMIC_SEQ_CST);
  r = pt_rd_call(fd, buf, n, word, v);
  __atomic_store_n(&rd_armed, 0, __ATOMIC_SEQ_CST);
  if (r < 0) { errno = (int)-r; return -1; }
  return (ssize_t)r;
}
#else
static void rd_wake(void) {}
ssize_t pt_read_interruptible(int fd, void *buf, size_t n) {
  (void)fd; (void)buf; (void)n;
  return -2;
}
const char *pt_set_recv_signal(double n) {
  int sig = (n >= 0 && n <= SIGRTMAX) ? (int)n : -1;
  if (sig != n || (sig != 0 && sig < SIGRTMIN))
    return "recv_signal must be a real-time signal number (SIGRTMIN to SIGRTMAX) or 0 for none";
  return NULL;                             /* none is ever taken here */
}
#endif

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
