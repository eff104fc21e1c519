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

static void rd_after_fork(void);

PT_AFTER_FORK static void intr_after_fork(void) {
  int fd = intr_fd;
  rd_after_fork();
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
  static int registered;
  int fd;
  /* rd_after_fork too; in the child of any fork, a bare one's too (the
     handler in it would write the parent's fd: twice in procthread's own
     children, which does nothing the second time) */
  if (!registered) {
    registered = 1;
    pt_atfork_child(intr_after_fork);
    (void)pthread_atfork(NULL, NULL, intr_after_fork);
  }
  if (intr_state != INTR_NONE) return;
  fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return;                      /* the waits block SIGINT instead */
  __atomic_store_n(&intr_fd, fd, __ATOMIC_SEQ_CST);
  intr_state = INTR_OWN;
}

void pt_interrupt_wake(void) {             /* async-signal-safe */
  int fd = __atomic_load_n(&intr_fd, __ATOMIC_SEQ_CST);
  uint64_t one = 1;
  if (fd >= 0 && write(fd, &one, sizeof one) < 0) { /* full: readable anyway */ }
}

/* ---- a read that Ctrl-C ends, with no poll before it ----------------------

   The thread Ctrl-C interrupts (the process's main thread) would have to
   poll before each blocking read (the read fd and the wake-up eventfd
   above) to stay interruptible: two system calls where one would do.
   Instead it blocks in read() itself, through pt_rd_call: a few
   instructions that mark the thread armed (pt_rd_armed), compare the
   SIGINT count (the futex word of pt_interrupt_word) with the value the
   caller acted on, enter read(), and clear the mark.  A SIGINT handled on
   that thread while it sleeps in read() ends the read with EINTR (the
   handler has no SA_RESTART).  One that lands in the gap, from the
   comparison to the system call instruction, would not: there the SIGINT
   handler, which sees where the thread was stopped, makes it go on at
   pt_rd_cancel, which returns -EINTR as an interrupted read would
   (pt_interrupt_steer; musl's thread cancellation works the same way).
   Two cases are left, where the handler cannot steer the gap itself:
   the SIGINT was taken by another thread, or it came while the main
   thread ran another signal's handler that had interrupted the gap (the
   outer handler would return into the gap, and read() block).  Then,
   while armed, it sends the main thread a signal of its own, the recv
   signal, whose handler does the same: in the gap it steers it; past the
   system call it does nothing; anywhere else (a handler over the gap, or
   the SIGINT handler itself) it blocks the recv signal in the context it
   returns to and sends it again, so that it comes once that handler has
   returned, into the gap.  Before each send it looks that the recv signal
   is still ours: a program that took it since (a handler of its own,
   SIG_DFL) is sent nothing, and its recvs poll from then on.  The recv
   signal: the highest real-time signal without a handler, SIGRTMAX down
   to SIGRTMIN+7, taken at the first such read; with SA_RESTART, so that
   one that comes late only restarts whatever call the thread is in.  No
   such signal, not x86-64, or under ThreadSanitizer (whose interceptors
   run handlers late, in a context of their own, and do not see a raw
   read): the caller polls first, as before. */
/* pt.configure{ recv_signal = n }: NULL and *sig, or why not. */
static const char *rd_check(double n, int *sig) {
  *sig = (n >= 0 && n <= SIGRTMAX) ? (int)n : -1;
  if (*sig != n || (*sig != 0 && *sig < SIGRTMIN))
    return "recv_signal must be a real-time signal number (SIGRTMIN to SIGRTMAX) or 0 for none";
  return NULL;
}

#if defined(__x86_64__) && defined(__linux__) && !defined(PT_UNDER_TSAN)
#define RD_CALL 1
/* long pt_rd_call(int fd, void *buf, size_t n, const uint32_t *word,
   uint32_t v): read's result or -errno.  pt_rd_probe (a test's
   pt.configure{ _recv_probe = sig }): once, sends the thread sig from
   inside the gap, after the comparison (r8-r10 keep the arguments). */
__asm__(".text\n"
        ".type pt_rd_call, @function\n"
        ".globl pt_rd_call\n.hidden pt_rd_call\n"
        ".globl pt_rd_begin\n.hidden pt_rd_begin\n"
        ".globl pt_rd_end\n.hidden pt_rd_end\n"
        ".globl pt_rd_cancel\n.hidden pt_rd_cancel\n"
        ".globl pt_rd_stop\n.hidden pt_rd_stop\n"
        "pt_rd_call:\n"
        "  movl $1, %eax\n"
        "  xchgl %eax, pt_rd_armed(%rip)\n"   /* armed, a full barrier */
        "pt_rd_begin:\n"
        "  movl (%rcx), %eax\n"
        "  cmpl %r8d, %eax\n"
        "  jne pt_rd_cancel\n"
        "  cmpl $0, pt_rd_probe(%rip)\n"
        "  je 1f\n"
        "  movq %rdi, %r9\n"
        "  movq %rsi, %r10\n"
        "  movq %rdx, %r8\n"
        "  movl $39, %eax\n"                  /* SYS_getpid */
        "  syscall\n"
        "  movl %eax, %edi\n"
        "  movl %eax, %esi\n"
        "  xorl %edx, %edx\n"
        "  xchgl %edx, pt_rd_probe(%rip)\n"
        "  movl $234, %eax\n"                 /* SYS_tgkill */
        "  syscall\n"
        "  movq %r9, %rdi\n"
        "  movq %r10, %rsi\n"
        "  movq %r8, %rdx\n"
        "1:\n"
        "  xorl %eax, %eax\n"                 /* SYS_read */
        "  syscall\n"
        "pt_rd_end:\n"                        /* read() entered: its result */
        "  movl $0, pt_rd_armed(%rip)\n"
        "  ret\n"
        "pt_rd_cancel:\n"
        "  movq $-4, %rax\n"                  /* -EINTR */
        "  movl $0, pt_rd_armed(%rip)\n"
        "  ret\n"
        "pt_rd_stop:\n"
        ".size pt_rd_call, .-pt_rd_call\n");
#define RD_HIDDEN __attribute__((visibility("hidden")))
RD_HIDDEN long pt_rd_call(int fd, void *buf, size_t n, const uint32_t *word, uint32_t v);
extern RD_HIDDEN const char pt_rd_begin[], pt_rd_end[], pt_rd_cancel[], pt_rd_stop[];
/* atomic, written by pt_rd_call: the main thread is in it */
RD_HIDDEN __attribute__((used)) int pt_rd_armed;
RD_HIDDEN __attribute__((used)) int pt_rd_probe;  /* see pt_rd_call */

static int rd_sig;           /* atomic: the recv signal; 0 none yet, -1 none to be had */
static int rd_wanted = -1;   /* atomic: pt.configure's recv_signal (0: none), or -1 */
static int rd_decided;       /* atomic: rd_install ran */

static void rd_after_fork(void) {
  __atomic_store_n(&pt_rd_armed, 0, __ATOMIC_RELAXED);  /* the forking thread was not in it */
}

/* Where the main thread was stopped (uc): in the gap (RD_GAP), past the
   system call (RD_PAST: nothing to do), or elsewhere (RD_ELSE: in a
   handler that interrupted the gap, or the tail). */
enum { RD_GAP, RD_PAST, RD_ELSE };

static int rd_where(const ucontext_t *uc) {
  uintptr_t pc = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
  if (pc >= (uintptr_t)pt_rd_begin && pc < (uintptr_t)pt_rd_end) return RD_GAP;
  return pc >= (uintptr_t)pt_rd_end && pc < (uintptr_t)pt_rd_stop ? RD_PAST : RD_ELSE;
}

/* 1: steered out of the gap (to pt_rd_cancel) or past it. */
static int rd_steer(ucontext_t *uc) {
  int at = rd_where(uc);
  if (at == RD_GAP) uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(uintptr_t)pt_rd_cancel;
  return at != RD_ELSE;
}

static void rd_on_wake(int sig, siginfo_t *si, void *ctx);

/* The recv signal, while its handler is still ours; else 0, and the
   recvs poll from now on (the program took it: a handler, SIG_DFL). */
static int rd_usable(void) {
  int sig = __atomic_load_n(&rd_sig, __ATOMIC_SEQ_CST);
  struct sigaction cur;
  if (sig <= 0) return 0;
  if (sigaction(sig, NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) &&
      cur.sa_sigaction == rd_on_wake)
    return sig;
  __atomic_store_n(&rd_sig, -1, __ATOMIC_SEQ_CST);
  return 0;
}

/* Send the main thread sig; uc: the main thread's context, which then
   keeps it blocked (it comes again once the handler that context runs
   has returned), as does the rest of this handler (a SIGINT handler
   may be SA_NODEFER: lua5.3's is). */
static void rd_send(ucontext_t *uc, int sig) {
  pid_t pid = getpid();                      /* the main thread's tid */
  sigset_t now;
  if (sig <= 0) return;
  if (uc) {
    sigaddset(&uc->uc_sigmask, sig);
    sigemptyset(&now);
    sigaddset(&now, sig);
    sigprocmask(SIG_BLOCK, &now, NULL);
  }
  syscall(SYS_tgkill, pid, pid, sig);
}

static void rd_on_wake(int sig, siginfo_t *si, void *ctx) {
  ucontext_t *uc = (ucontext_t *)ctx;
  int e = errno;
  (void)sig; (void)si;
  if (__atomic_load_n(&pt_rd_armed, __ATOMIC_SEQ_CST) && !rd_steer(uc))
    rd_send(uc, rd_usable());
  errno = e;
}

static int on_main_thread(void) { return syscall(SYS_gettid) == getpid(); }

/* The recv signal, for a main thread in a handler over the gap (uc):
   still ours, and not blocked in that handler (a mask that holds every
   signal the gap's does: one the program blocked would never come). */
static int rd_over(const ucontext_t *uc) {
  int sig = rd_usable();
  return sig > 0 && !sigismember(&uc->uc_sigmask, sig) ? sig : 0;
}

/* From the SIGINT handler, first (async-signal-safe): 1 when this SIGINT
   is put off.  It came on the main thread inside another handler over
   the gap, and the recv signal cannot come there (rd_over): SIGINT is then blocked
   in that handler's context and sent again, to come once that handler
   returns, into the gap; its disposition is still ours then (the
   interpreter's handler, which resets it, has not run). */
int pt_interrupt_defer(void *ctx) {
  ucontext_t *uc = (ucontext_t *)ctx;
  if (!__atomic_load_n(&pt_rd_armed, __ATOMIC_SEQ_CST) || !on_main_thread() ||
      rd_where(uc) != RD_ELSE || rd_over(uc))
    return 0;
  rd_send(uc, SIGINT);
  return 1;
}

/* From the SIGINT handler, after it counted (so that the read it ends
   sees the new count). */
void pt_interrupt_steer(void *ctx) {
  ucontext_t *uc = (ucontext_t *)ctx;
  if (!__atomic_load_n(&pt_rd_armed, __ATOMIC_SEQ_CST)) return;
  if (!on_main_thread()) rd_send(NULL, rd_usable());   /* another thread took it */
  else if (!rd_steer(uc)) rd_send(uc, rd_over(uc));
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
  int sig;
  const char *why = rd_check(n, &sig);
  if (why) return why;
  if (__atomic_load_n(&rd_decided, __ATOMIC_ACQUIRE)) {
    int had = __atomic_load_n(&rd_sig, __ATOMIC_ACQUIRE);
    return sig == (had < 0 ? 0 : had) ? NULL
           : "recv_signal: a pipe recv has taken its signal already; configure it before first use";
  }
  if (sig && !rd_free(sig)) return "recv_signal: the program has a handler on that signal";
  __atomic_store_n(&rd_wanted, sig, __ATOMIC_RELEASE);
  return NULL;
}

/* A test's outer handler (pt_set_recv_probe): it takes a SIGINT, which
   comes while it runs, over the gap. */
static void rd_probe_handler(int sig) {
  pid_t pid = getpid();
  (void)sig;
  syscall(SYS_tgkill, pid, pid, SIGINT);
}

const char *pt_set_recv_probe(double n) {
  int sig = n >= 1 && n < NSIG ? (int)n : -1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = rd_probe_handler;
  sa.sa_flags = SA_RESTART;
  if (sig != n || sig == SIGINT || sigaction(sig, &sa, NULL) != 0)
    return "_recv_probe must be a signal number other than SIGINT";
  __atomic_store_n(&pt_rd_probe, sig, __ATOMIC_SEQ_CST);
  return NULL;
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
  r = pt_rd_call(fd, buf, n, word, v);
  if (r < 0) { errno = (int)-r; return -1; }
  return (ssize_t)r;
}
#else
static void rd_after_fork(void) {}
int pt_interrupt_defer(void *ctx) { (void)ctx; return 0; }
void pt_interrupt_steer(void *ctx) { (void)ctx; }
ssize_t pt_read_interruptible(int fd, void *buf, size_t n) {
  (void)fd; (void)buf; (void)n;
  return -2;
}
const char *pt_set_recv_signal(double n) {
  int sig;
  return rd_check(n, &sig);                /* none is ever taken here */
}
const char *pt_set_recv_probe(double n) {
  (void)n;
  return "_recv_probe: no read steered here";
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
