/* lifecycle.c - what happens to workers when their program ends: the
 * at-exit registry (wait for or stop the workers never joined), the
 * lifeline that ends a process worker whose parent process died, and
 * Ctrl-C in blocking calls (DESIGN.md, "Lifecycle").
 *
 * Registry.  Every worker this process spawns is entered here (one
 * reference) until it has ended: a thread removes itself when it leaves,
 * a process when it is reaped.  The same list serves a worker process
 * that leaves: it stops its running threads first (stop_threads).  When the program ends -- the main Lua
 * state is closed (a sentinel userdata's __gc) or exit() runs without
 * lua_close (atexit: os.exit on 5.1-5.3, LuaJIT, 5.4 without `close`) --
 * the workers still running are waited for or stopped, and one stderr
 * line says so.  The sentinel is made again at every spawn, so it is
 * newer than every worker handle: lua_close runs finalizers newest first,
 * so the handles are still alive when it runs.
 *
 * Lifeline.  Each process worker gets a pipe: the parent keeps the write
 * end (close-on-exec, closed in every other worker process right after
 * its fork) and both share the read end, which the parent sets to signal
 * (F_SETSIG SIGKILL, O_ASYNC) no one, and the child then itself
 * (F_SETOWN).  A lifeline of a child that has ended is kept for the next
 * spawn (no pipe made or closed; the parent takes its owner off): the
 * child of any fork closes it, so no other process holds its write end
 * when it is used again.  The write end closes
 * when the parent *process* dies, however it dies (a thread that forked
 * may end: the fd table is the process's); the kernel then sends the
 * child SIGKILL at once, busy or idle -- no thread, no polling.  (The
 * parent-death signal of prctl would fire when the forking *thread*
 * ends.)  The child arms before it closes its own copy of the write end:
 * if its parent died while it started, that close is the last, and
 * signals it (pt.detach disarms before it closes its end).  pt.detach clears
 * O_ASYNC on the shared read end first: the child is then left alone.
 *
 * Ctrl-C.  lua.c and luajit.c catch SIGINT while a script runs and set a
 * hook that raises "interrupted!" at the next VM instruction; a wait that
 * retries poll() on EINTR never lets it run.  At the first luaopen we
 * chain in front of that handler (it still runs, and still resets itself
 * to SIG_DFL) to count SIGINTs, without SA_RESTART so blocking reads and
 * writes return EINTR too.  A blocking call of the main thread that sees
 * a new SIGINT gives up (pt_interrupted) and returns nil, "interrupted"
 * through the cancellation path (pt_raise_cancelled); the hook raises as
 * soon as control is back in Lua.  A SIGINT that lands between the check
 * and the system call is not an EINTR; the waits close that race
 * instead of waking on a timer: a poll-based wait also polls an eventfd
 * the handler writes after it counts (cancel.c); a futex-based
 * wait watches the count itself as one more futex word, which the
 * handler bumps and wakes (pt_interrupt_word): a SIGINT after the check
 * changes the word, so the kernel does not sleep. */
#include "worker.h"
#include "wait.h"
#include "rawsys.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define SENTINEL_MT "procthread.lifecycle"
#define SENTINEL_KEY "procthread.lifecycle.sentinel"

/* ---- Ctrl-C ---------------------------------------------------------------- */

static pid_t opener;                     /* the process that set the handlers */
static uint32_t sigint_count;            /* atomic: SIGINTs seen; a futex word */
static struct sigaction chained;         /* the handler we run in front of */
static PT_TLS uint32_t intr_seen;      /* sigint_count this thread acted on */
static PT_TLS int intr_pending;        /* a wait gave up for a SIGINT */
static PT_TLS int main_thread = -1;    /* cached: this is the process's main thread */

/* Count, and wake the futex waits that watch the count (a raw syscall:
   async-signal-safe).  Shared, not private: wait.c's waits are. */
static void count_sigint(void) {
  int e = errno;
  __atomic_add_fetch(&sigint_count, 1, __ATOMIC_SEQ_CST);
  syscall(SYS_futex, &sigint_count, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
  pt_interrupt_wake();                   /* the poll waits (cancel.c) */
  errno = e;
}

/* SA_SIGINFO: the context tells where the main thread was stopped, for
   a pipe read that is about to begin (pt_interrupt_steer). */
static void on_sigint(int sig, siginfo_t *si, void *ctx) {
  int e = errno;
  (void)si;
  if (pt_interrupt_defer(ctx)) { errno = e; return; }
  count_sigint();
  pt_interrupt_steer(ctx);
  errno = e;
  if (chained.sa_handler != SIG_DFL && chained.sa_handler != SIG_IGN)
    chained.sa_handler(sig);
}

/* Run in front of the interpreter's SIGINT handler, if it has one (ours
   is SA_SIGINFO; the interpreter's never is). */
static void chain_sigint(void) {
  struct sigaction cur, sa;
  if (sigaction(SIGINT, NULL, &cur) != 0) return;
  if (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN ||
      (cur.sa_flags & SA_SIGINFO))
    return;
  pt_interrupt_fd_open();
  chained = cur;
  sa = cur;
  sa.sa_sigaction = on_sigint;
  sa.sa_flags &= ~(SA_RESTART | SA_RESETHAND);
  sa.sa_flags |= SA_SIGINFO;
  sigaction(SIGINT, &sa, NULL);
}

static int is_main_thread(void) {
  if (main_thread < 0) main_thread = syscall(SYS_gettid) == pt_pid();
  return main_thread;
}

/* Only the process's own thread is interrupted (not a thread worker, not
   a helper thread such as a reaper). */
static int interruptible(void) {
  pt_ctx *c = pt_self_ctx;
  return (!c || c->kind != PT_THREAD) && is_main_thread();
}

int pt_interrupted(void) {
  unsigned n = __atomic_load_n(&sigint_count, __ATOMIC_SEQ_CST);
  if (n == intr_seen || !interruptible()) return 0;
  intr_seen = n;
  intr_pending = 1;
  return 1;
}

int pt_interrupt_watched(void) {
  return chained.sa_handler != NULL && interruptible();
}

const uint32_t *pt_interrupt_word(uint32_t *expected) {
  if (!pt_interrupt_watched()) return NULL;
  *expected = intr_seen;
  return &sigint_count;
}

int pt_interrupt_pending(void) { return intr_pending; }

/* pt._ignore_sigint() (pools): a process worker of a pool ignores SIGINT
   from now on, as Python users arrange in an initializer: a Ctrl-C at a
   terminal, which reaches the whole process group, interrupts the caller
   alone.  Anywhere but in a forked process worker it does nothing. */
static int l_ignore_sigint(lua_State *L) {
  pt_ctx *c = pt_self_ctx;
  struct sigaction sa;
  if (!c || c->kind != PT_PROCESS) return 0;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGINT, &sa, NULL) != 0) return pt_push_oserror(L, "sigaction", errno);
  return 0;
}

/* pt._sigints() -> the SIGINTs counted so far: a pool's wait that got
   nil, "interrupted" goes on waiting when the count did not move (another
   signal's Lua handler ended it, and has run). */
static int l_sigints(lua_State *L) {
  lua_pushnumber(L, (lua_Number)__atomic_load_n(&sigint_count, __ATOMIC_SEQ_CST));
  return 1;
}

int pt_take_interrupt(void) {
  int p = intr_pending;
  intr_pending = 0;
  return p;
}

/* ---- the registry ---------------------------------------------------------- */

/* The registry is a list through the records themselves (worker.h), so
   entering never fails; reg_mu guards it and the records' registry
   fields.  It is also the list of this process's running threads that a
   leaving worker process stops (pt_lifecycle_stop_threads). */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pt_worker *reg;
static int my_lifeline = -1;             /* in a worker process: its read end */

/* What at exit works on: a registered worker as it was when the pass
   began, with a reference. */
typedef struct entry {
  pt_worker *w;
  const void *owner;
  int released, daemon;
  int lifeline;           /* process: handed over to the kill phase, or -1 */
} entry;

static const char *const policy_names[] = {"wait", "stop", NULL};
static int policy;                       /* 0 wait, 1 stop */
static double exit_grace = 1.0;

/* w if it is registered (reg_mu held), else NULL. */
static pt_worker *find(pt_worker *w) { return w->listed ? w : NULL; }

/* A lifeline kept for the next fork (reg_mu; -1: none): the pipe of a
   process worker that has ended, both ends, its read end's file still set
   to send SIGKILL (O_ASYNC, F_SETSIG) but to no one (F_SETOWN 0).  The
   next child arms it with one fcntl (its pid the owner) and the parent
   makes no pipe and closes none: a pipe2 and its two closes were some 10
   us a spawn here.  A forked child closes it (every fork: fork_closes),
   so that no other process holds its write end when it is used again. */
static int spare_life[2];        /* the fds + 1, 0: none (.bss: see spare_drain, process.c) */

/* Forks this process made, any (pthread_atfork's parent handler).  A
   child of a fork that is not a spawn of ours (a bare fork(), or one of
   ours in the moment before its sibling's lifeline is registered) keeps
   the write ends of the live lifelines it inherited: such a lifeline is
   not kept.  So one is kept only when no fork but its own child's came
   in its life (w->lifeline_forks: the count after that fork). */
static unsigned forks_made;      /* atomic */
static unsigned prefork_forks;   /* reg_mu: forks_made when the lifeline was made or taken */
static void count_fork(void) { __atomic_add_fetch(&forks_made, 1, __ATOMIC_RELAXED); }

/* The lifeline of an ended child: kept if none is (reg_mu held), its
   owner taken off.  Its signal and O_ASYNC were set by the parent that
   made it (pt_lifeline_prefork), so only pt.detach, which keeps none,
   clears them.  1 kept, else the caller closes it. */
static int keep_lifeline(int fd, int rfd, unsigned forks) {
  if (spare_life[0] > 0 || fd < 0 || rfd < 0) return 0;
  if (__atomic_load_n(&forks_made, __ATOMIC_RELAXED) != forks) return 0;
  if (fcntl(rfd, F_SETOWN, 0) != 0) return 0;
  spare_life[0] = rfd + 1;
  spare_life[1] = fd + 1;
  return 1;
}

/* In the child of every fork (pthread_atfork; ours too): the kept
   lifeline is the parent's alone.  Read without the lock: a fork of ours
   holds reg_mu across it, another's may catch an exchange half done, and
   then closes a lifeline of the parent's all the same (as it should). */
PT_AFTER_FORK static void fork_closes(void) {
  if (spare_life[0] > 0) pt_raw_close(spare_life[0] - 1);
  if (spare_life[1] > 0) pt_raw_close(spare_life[1] - 1);
  if (spare_life[0] || spare_life[1]) spare_life[0] = spare_life[1] = 0;
}
static pthread_once_t fork_closes_once = PTHREAD_ONCE_INIT;
static void watch_forks(void) { pthread_atfork(NULL, count_fork, fork_closes); }

int pt_lifeline_spare_fds(void) {
  int n;
  pthread_mutex_lock(&reg_mu);
  n = (spare_life[0] > 0) + (spare_life[1] > 0);
  pthread_mutex_unlock(&reg_mu);
  return n;
}

/* Take w out (reg_mu held); returns what the caller must drop unlocked.
   ended: its child has ended (reaped), so its lifeline may be kept. */
static pt_worker *take(pt_worker *w, int ended) {
  if (!ended || !keep_lifeline(w->lifeline, w->lifeline_r, w->lifeline_forks)) {
    pt_close(w->lifeline);
    pt_close(w->lifeline_r);
  }
  w->lifeline = w->lifeline_r = -1;
  if (w->prev) w->prev->next = w->next; else reg = w->next;
  if (w->next) w->next->prev = w->prev;
  w->prev = w->next = NULL;
  w->listed = 0;
  return w;
}

static const void *owner_of(lua_State *L) {
  pt_ctx *c = pt_self_ctx;
  return (!c || c->kind == PT_MAIN) ? lua_topointer(L, LUA_REGISTRYINDEX) : NULL;
}

static void add(lua_State *L, pt_worker *w, int lifeline, int lifeline_r) {
  pthread_mutex_lock(&reg_mu);
  w->owner = owner_of(L);
  w->lifeline = lifeline;
  w->lifeline_r = lifeline_r;
  w->released = w->daemon = w->adopted = w->handled = 0;
  w->listed = 1;
  w->prev = NULL;
  w->next = reg;
  if (reg) reg->prev = w;
  reg = w;
  pt_worker_ref(w);
  pthread_mutex_unlock(&reg_mu);
}

void pt_lifecycle_add(lua_State *L, pt_worker *w) { add(L, w, -1, -1); }

void pt_lifecycle_remove(pt_worker *w) {
  pt_worker *e, *gone = NULL;
  pthread_mutex_lock(&reg_mu);
  if ((e = find(w)) != NULL) gone = take(e, 1);
  pthread_mutex_unlock(&reg_mu);
  if (gone) pt_worker_unref(gone);
}

int pt_lifecycle_adopt(pt_worker *w) {
  pt_worker *e;
  pthread_mutex_lock(&reg_mu);
  if ((e = find(w)) != NULL) e->adopted = 1;
  pthread_mutex_unlock(&reg_mu);
  return e != NULL;
}

void pt_lifecycle_released(pt_worker *w) {
  pt_worker *e;
  pthread_mutex_lock(&reg_mu);
  if ((e = find(w)) != NULL) e->released = 1;
  pthread_mutex_unlock(&reg_mu);
}

/* Every running thread worker of this process is registered (it leaves
   the registry as it ends, its handle collected or not): cancel each,
   then wait for the count each thread takes down once it has touched
   its last shared object. */
int pt_lifecycle_stop_threads(double timeout) {
  double deadline;
  pt_worker *w;
  int n;
  /* none: a leaving process writes (and copies) no page for this */
  if (__atomic_load_n(&pt_live_threads, __ATOMIC_SEQ_CST) == 0) return 0;
  deadline = pt_deadline(timeout);
  pthread_mutex_lock(&reg_mu);
  for (w = reg; w; w = w->next)
    if (w->kind == PT_THREAD) w->ops->cancel(w);
  pthread_mutex_unlock(&reg_mu);
  __atomic_add_fetch(&pt_live_waiters, 1, __ATOMIC_SEQ_CST);   /* before the count is read */
  while ((n = __atomic_load_n(&pt_live_threads, __ATOMIC_SEQ_CST)) > 0) {
    int r = pt_futex_wait((const uint32_t *)&pt_live_threads, (uint32_t)n, deadline, NULL);
    if (r == PT_TIMEOUT || r == PT_ERR) break;
  }
  __atomic_sub_fetch(&pt_live_waiters, 1, __ATOMIC_SEQ_CST);
  return __atomic_load_n(&pt_live_threads, __ATOMIC_SEQ_CST);
}

/* ---- the lifeline ---------------------------------------------------------- */

static pid_t prefork_parent;

int pt_lifeline_prefork(int life[2]) {
  pid_t me = pt_pid();
  pthread_once(&fork_closes_once, watch_forks);
  pthread_mutex_lock(&reg_mu);     /* the child must see the registry whole */
  if (prefork_parent != me) prefork_parent = me;
  prefork_forks = __atomic_load_n(&forks_made, __ATOMIC_RELAXED);
  if (spare_life[0] > 0) {
    life[0] = spare_life[0] - 1;
    life[1] = spare_life[1] - 1;
    spare_life[0] = spare_life[1] = 0;
    return 0;
  }
  life[0] = life[1] = -1;
  /* a new lifeline: SIGKILL and O_ASYNC set here, to no one until the
     child makes itself the owner (pipe2 set no status flag: O_CLOEXEC is
     the fd's, so no F_GETFL) */
  if (pipe2(life, O_CLOEXEC) != 0 || fcntl(life[0], F_SETSIG, SIGKILL) != 0 ||
      fcntl(life[0], F_SETFL, O_ASYNC) != 0) {
    int e = errno;
    if (life[0] >= 0) { pt_close(life[0]); pt_close(life[1]); }
    pthread_mutex_unlock(&reg_mu);
    errno = e;
    return -1;
  }
  return 0;
}

/* In the new child, first thing: forget the parent's workers (and close
   their lifelines: only the parent may hold them), arm our own.  Armed
   first, then our copy of the write end closed: if the parent's has
   closed already (it died while we started), ours is the last, and its
   close signals us at once -- the pipe's lock orders arming and the last
   writer's close, so no look at the pipe is needed.  pt.detach clears
   O_ASYNC before it closes its end: a close after that signals no one.
   Every page the child writes is a copy-on-write fault: the thread-local
   words are written only when they change (this thread is the child's
   only one, so its main thread), and the code sits with the rest of the
   child's path (hot: process.c, PT_CHILD_PATH).  Its closes keep no
   errno (nothing here reads it): errno is libc's code, one more fault. */
static void child_close(int fd) { if (fd >= 0) pt_raw_close(fd); }

__attribute__((hot)) void pt_lifeline_child(int life[2]) {
  pt_worker *w;
  uint32_t n = __atomic_load_n(&sigint_count, __ATOMIC_SEQ_CST);
  pt_mutex_reset(&reg_mu);         /* held across the fork by this very thread */
  for (w = reg; w; w = w->next) { child_close(w->lifeline); child_close(w->lifeline_r); }
  if (reg) reg = NULL;             /* the records are the parent's: left alone */
  child_close(my_lifeline);
  my_lifeline = life[0];
  if (main_thread != 1) main_thread = 1;
  if (intr_seen != n) intr_seen = n;
  if (intr_pending) intr_pending = 0;
  /* the read end's file has its signal and O_ASYNC set already (by the
     parent, pt_lifeline_prefork), and no owner until this one */
  if (pt_raw_fcntl(life[0], F_SETOWN, pt_pid()) == 0) {
    pt_raw_close(life[1]);
  } else {
    pt_raw_close(life[1]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);     /* the best left: the forking thread's end */
    if (getppid() != prefork_parent) _exit(1);   /* it died before we were armed */
  }
}

void pt_lifeline_parent(lua_State *L, pt_worker *w, int life[2], int forked) {
  w->lifeline_forks = prefork_forks + 1;   /* the count once this child's fork is in */
  pthread_mutex_unlock(&reg_mu);
  if (forked) {
    add(L, w, life[1], life[0]);
  } else {
    pt_close(life[0]);
    pt_close(life[1]);
  }
}

/* ---- pt.detach, the pool's mark (worker.c), configure ---------------------- */

/* Clear O_ASYNC on a lifeline's read end (a file the child shares).  It
   was set before the fork (pt_lifeline_prefork) and the child only makes
   itself the owner, so no later step of the child's sets it again. */
static void disarm(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_ASYNC);
}

void pt_lifecycle_detach(pt_worker *w) {
  pt_worker *e, *gone = NULL;
  pthread_mutex_lock(&reg_mu);
  if ((e = find(w)) != NULL) {
    /* disarm before the write end can close (the file is the child's too) */
    if (e->lifeline_r >= 0) disarm(e->lifeline_r);
    gone = take(e, 0);
  }
  pthread_mutex_unlock(&reg_mu);
  if (gone) pt_worker_unref(gone);
}

void pt_lifecycle_daemon(pt_worker *w, int helper) {
  pt_worker *e;
  pthread_mutex_lock(&reg_mu);
  if ((e = find(w)) != NULL) e->daemon = helper ? 2 : 1;
  pthread_mutex_unlock(&reg_mu);
}

/* _exit_policy(at_exit or nil, exit_grace or nil): pt.configure's keys. */
static int l_exit_policy(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) policy = luaL_checkoption(L, 1, NULL, policy_names);
  if (!lua_isnoneornil(L, 2)) {
    double g = luaL_checknumber(L, 2);
    if (!(g >= 0)) return luaL_argerror(L, 2, "exit_grace must be a number of seconds >= 0");
    exit_grace = g;
  }
  return 0;
}

/* ---- at exit ------------------------------------------------------------------ */

/* The handles of the main states are ours to use: at_exit runs on the
   main thread (exit() called elsewhere, by a thread worker, may run while
   the main state still uses them). */
static int on_main;

static int running(const entry *e) {
  pt_worker *w = e->w;
  if (__atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) return 0;
  /* a process nobody else reaps: reap it here (it then leaves the registry) */
  if (w->kind == PT_PROCESS && on_main && e->owner && !e->released) w->ops->wait(w, 0);
  if (__atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) return 0;
  if (w->kind == PT_PROCESS) {
    /* someone else reaps it: look without reaping (an error: reaped) */
    siginfo_t si;
    si.si_pid = 0;
    if (waitid(P_PID, (id_t)w->id, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid != 0)
      return 0;
  }
  return 1;
}

static void signal_process(const entry *e, int sig) {
  pt_worker *w = e->w;
  if (__atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) return;
  if (on_main && e->owner && !e->released) w->ops->signal(w, sig);
  else kill(w->id, sig);
}

/* Cancel a thread while it is certainly there: still in the registry
   (it leaves it under reg_mu, before a joiner may close its fds), from
   whatever thread runs the exit -- a thread worker's exit() too, while
   the main thread may be joining it: a thread blocked in a cancellation
   point ends at once, and exit_grace is left for the busy ones. */
static void cancel_thread(entry *e) {
  pthread_mutex_lock(&reg_mu);
  if (find(e->w)) e->w->ops->cancel(e->w);
  pthread_mutex_unlock(&reg_mu);
}

static void stop(entry *e, int hard) {
  if (e->w->kind == PT_THREAD) {
    if (!hard) cancel_thread(e);
    return;                          /* the process's end ends it */
  }
  signal_process(e, hard ? SIGKILL : SIGTERM);
  if (hard) { pt_close(e->lifeline); e->lifeline = -1; }
}

/* Poll until no worker of `set` runs (procs: no process), or `secs` pass
   (<0: forever), or (interrupt) a SIGINT comes.  Returns how many run. */
static int wait_all(entry *set, int n, double secs, int procs, int interrupt, uint32_t *sig0) {
  double end = secs < 0 ? -1 : pt_clock_now() + secs;
  for (;;) {
    int i, left = 0;
    for (i = 0; i < n; i++)
      if ((!procs || set[i].w->kind == PT_PROCESS) && running(&set[i])) left++;
    if (left == 0) return 0;
    if (interrupt && __atomic_load_n(&sigint_count, __ATOMIC_SEQ_CST) != *sig0) return left;
    if (end >= 0 && pt_clock_now() >= end) return left;
    poll(NULL, 0, 5);
  }
}

/* A pool's helper (daemon 2: its watcher) is stopped, never counted. */
static int count_running(entry *set, int n) {
  int i, k = 0;
  for (i = 0; i < n; i++) if (set[i].daemon != 2 && running(&set[i])) k++;
  return k;
}

/* A copy of the entries of `owner` (NULL: all), each with a reference.
   A thread of another thread worker is that worker's to end. */
static entry *snapshot(const void *owner, int all, int *n) {
  entry *set;
  pt_worker *w;
  int k = 0;
  pthread_mutex_lock(&reg_mu);
  for (w = reg; w; w = w->next) k++;
  set = (entry *)calloc((size_t)(k ? k : 1), sizeof *set);
  for (w = reg, k = 0; set && w; w = w->next) {
    if (!all && w->owner != owner && (w->owner || w->kind == PT_THREAD)) continue;
    if (w->owner == NULL && w->kind == PT_THREAD) continue;
    if ((pt_self_ctx && pt_self_ctx == w->self) || w->handled) continue;   /* exit() called by this thread */
    w->handled = 1;
    set[k].w = w;
    set[k].owner = w->owner;
    set[k].released = w->released;
    set[k].daemon = w->daemon;
    set[k].lifeline = -1;
    pt_worker_ref(w);
    k++;
  }
  pthread_mutex_unlock(&reg_mu);
  *n = k;
  return set;
}

/* Hand the kill phase the lifeline fds of what still runs. */
static void cut_lifelines(entry *set, int n) {
  int i;
  pthread_mutex_lock(&reg_mu);
  for (i = 0; i < n; i++) {
    pt_worker *e = set[i].w ? find(set[i].w) : NULL;
    if (e) { set[i].lifeline = e->lifeline; e->lifeline = -1; }
  }
  pthread_mutex_unlock(&reg_mu);
}

static void on_exit_sigint(int sig) {
  (void)sig;
  count_sigint();
}

static void at_exit(const void *owner, int all) {
  struct sigaction old, sa;
  entry *set;
  int n, i, waited = 0, stopped = 0, have_old;
  uint32_t sig0 = __atomic_load_n(&sigint_count, __ATOMIC_SEQ_CST);
  int hard = policy == 1 || sig0 != 0 || (pt_self_ctx && pt_self_ctx->kind == PT_THREAD);
  on_main = is_main_thread() && (!pt_self_ctx || pt_self_ctx->kind == PT_MAIN);
  set = snapshot(owner, all, &n);
  if (!set) return;
  /* a Ctrl-C during the wait stops the workers instead */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_exit_sigint;
  sigemptyset(&sa.sa_mask);
  have_old = sigaction(SIGINT, NULL, &old) == 0 && old.sa_handler != SIG_IGN &&
             sigaction(SIGINT, &sa, NULL) == 0;
  if (!hard) {
    for (i = 0; i < n; i++) {        /* pool workers are stopped, not waited for */
      if (set[i].daemon && running(&set[i])) { stopped += set[i].daemon == 1; stop(&set[i], 0); }
      if (!set[i].daemon && running(&set[i])) waited++;
    }
    if (waited && wait_all(set, n, -1, 0, 1, &sig0) > 0) hard = 1;
    if (hard) waited = 0;
  }
  if (hard) {
    stopped = count_running(set, n);
    for (i = 0; i < n; i++) if (running(&set[i])) stop(&set[i], 0);
  }
  if (stopped && wait_all(set, n, exit_grace, 0, 0, &sig0) > 0) {
    cut_lifelines(set, n);
    for (i = 0; i < n; i++) if (running(&set[i])) stop(&set[i], 1);
    wait_all(set, n, 1.0, 1, 0, &sig0);    /* reaped; a thread ends with us */
  }
  if (have_old) sigaction(SIGINT, &old, NULL);
  for (i = 0; i < n; i++) {
    pt_close(set[i].lifeline);
    pt_worker_unref(set[i].w);
  }
  free(set);
  if (waited || stopped) {
    char line[160];
    int k = 0;
    k += snprintf(line + k, sizeof line - k, "procthread: ");
    if (waited) k += snprintf(line + k, sizeof line - k, "waited for %d worker%s%s", waited,
                              waited == 1 ? "" : "s", stopped ? ", " : "");
    if (stopped) snprintf(line + k, sizeof line - k, "stopped %d worker%s", stopped,
                          stopped == 1 ? "" : "s");
    fprintf(stderr, "%s at exit\n", line);
    fflush(stderr);
  }
}


static void at_process_exit(void) {
  if (pt_pid() == opener) at_exit(NULL, 1);
}

typedef struct sentinel {
  int armed;
  pid_t pid;
} sentinel;

static int sentinel_gc(lua_State *L) {
  sentinel *s = (sentinel *)lua_touserdata(L, 1);
  if (s->armed && s->pid == pt_pid()) {
    s->armed = 0;
    at_exit(lua_topointer(L, LUA_REGISTRYINDEX), 0);
  }
  return 0;
}

/* A new sentinel, newer than every handle so far; the old one retires. */
void pt_lifecycle_arm(lua_State *L) {
  sentinel *s;
  if (!owner_of(L)) return;                  /* a thread worker's state */
  if (pt_pid() == opener) chain_sigint();   /* again: a REPL line sets its handler anew */
  lua_getfield(L, LUA_REGISTRYINDEX, SENTINEL_KEY);
  s = (sentinel *)lua_touserdata(L, -1);
  if (s) s->armed = 0;
  lua_pop(L, 1);
  s = (sentinel *)pt_newuserdata(L, sizeof *s);
  s->armed = 1;
  s->pid = pt_pid();
  if (luaL_newmetatable(L, SENTINEL_MT)) {
    lua_pushcfunction(L, sentinel_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, SENTINEL_KEY);
}

static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static void install(void) {
  opener = pt_pid();
  atexit(at_process_exit);
  chain_sigint();
}

void pt_open_lifecycle(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"_exit_policy", l_exit_policy}, {"_sigints", l_sigints},
    {"_ignore_sigint", l_ignore_sigint}, {NULL, NULL}};
  pt_ctx *c = pt_self_ctx;
  if (!c || c->kind == PT_MAIN) pthread_once(&exit_once, install);
  pt_setfuncs(L, fns);
}
