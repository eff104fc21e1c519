/* process.c - the process kind of worker (pt_process_ops): spawn_process
 * forks; the child runs fn on its copy-on-write copy of the caller's Lua
 * state, writes its results down a pipe and leaves with _exit.  The parent
 * waits on the pipe and a pidfd, signals, and reaps; a collected handle of
 * a child still running goes to the reaper thread. */
#include "worker.h"
#include "shm.h"
#include "rawsys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Result stream, child to parent: one byte (0 results, 1 error message),
   a u64 length, the payload. */
#define HDR 9

static pt_ctx process_ctx = {PT_PROCESS, NULL, -1, NULL, 0};

/* A process worker's record: the common part, then the process's own. */
typedef struct process_worker {
  pt_worker w;
  int pidfd;                  /* or -1: then its end is polled for */
  int result_fd;              /* read end of the result pipe, or -1 */
  int result_wfd;             /* its write end, kept for the next spawn
                                 (keep_pipe), or -1 */
  int drain_fd;               /* eventfd the child rings when its results
                                 do not fit the pipe (it waits for room) */
  int user_aux[2];            /* the fds w:fd() (an epoll) watches, or -1 */
  int spilled;                /* drain_fd rang: results are read as they come */
  int head_len;               /* bytes of head read */
  char head[HDR];             /* the stream's header, read first: in the record,
                                 whose page the parent writes anyway once the
                                 child has ended (settle), so that no results
                                 cost no malloc (and no copy-on-write fault of
                                 the heap pages it writes) */
  pt_shm_counts held;         /* counts held for it (shm.h), given back
                                 when it has ended */
  struct process_worker *next;   /* the orphans */
} process_worker;

static process_worker *pw(pt_worker *w) { return (process_worker *)w; }

/* One record kept in the module's own data (.bss), used while free: the
   common case of one spawn at a time.  That page is written after every
   fork anyway (libc's fork handlers' locks and counters of procthread's,
   the orphans' lock), so the record's writes after the fork cost no
   fault; a calloc'd record's heap page was one more copy-on-write fault
   a spawn + join.  A forked child finds it taken (its copy is the
   parent's record) and callocs its own. */
static process_worker slot;
static int slot_taken;                 /* atomic */

static process_worker *record_new(void) {
  int no = 0;
  process_worker *p;
  if (!__atomic_compare_exchange_n(&slot_taken, &no, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    return (process_worker *)pt_worker_new(&pt_process_ops, PT_PROCESS, sizeof *p);
  p = &slot;
  memset(p, 0, sizeof *p);
  pt_worker_init(&p->w, &pt_process_ops, PT_PROCESS);
  return p;
}

static void record_free(process_worker *p) {
  if (p != &slot) {
    pt_worker_free(&p->w);
    return;
  }
  pt_worker_fini(&p->w);
  __atomic_store_n(&slot_taken, 0, __ATOMIC_RELEASE);
}

/* The code a child runs between the fork and its _exit on the way of a
   plain return: grouped (in .text.hot, before the rest of the library's
   code), so that it is one or two windows of the kernel's fault-around.
   A new child maps no page of a library's code until it runs there: each
   window it touches is a page fault. */
#define PT_CHILD_PATH PT_AFTER_FORK
static int my_result_fd = -1;        /* in a worker process: its write end */
static int my_drain_fd = -1;         /* and its parent's drain_fd */
static int my_result_rfd = -1;       /* its copy of the read end, until its results spill */
static pid_t my_parent = -1;         /* the process that forked it */

/* Collected handles of children that still ran (see process_release). */
static pthread_mutex_t orphan_lock = PTHREAD_MUTEX_INITIALIZER;
static process_worker *orphans;            /* linked by next */
static int reaper_running;
static void reap_orphans(void);

static void send_results(lua_State *L, int base);

/* An ended child's drain_fd, its count read back to 0, kept for the next
   spawn: an eventfd made and closed was some 4 us a spawn here.  Atomic,
   the fd + 1 (0: none), so that it sits in .bss, a page the parent writes
   after every fork anyway (a .data word written there was one more
   copy-on-write fault a spawn).  A forked child closes the parent's
   (forget_parent). */
static int spare_drain;

/* An ended child's result pipe, emptied, kept for the next spawn: a
   pipe2 and two closes were some 5 us a spawn here.  Both ends in one
   atomic word, each fd + 1 (0: none), in .bss as spare_drain.  The parent
   keeps the write end open while the child runs (so the pipe never says
   hang-up: the join sleeps on the pidfd, which says the child's end), and
   only with a pidfd (without one the join looks for the hang-up).  A
   forked child closes the parent's (forget_parent). */
static uint64_t spare_pipe;

static uint64_t pipe_word(const int fds[2]) {
  return (uint64_t)(uint32_t)(fds[0] + 1) | (uint64_t)(uint32_t)(fds[1] + 1) << 32;
}

static inline void pipe_fds(uint64_t v, int fds[2]) {
  fds[0] = (int)(uint32_t)v - 1;
  fds[1] = (int)(uint32_t)(v >> 32) - 1;
}

/* The kept pipe into fds (1), or 0: none kept. */
static int take_pipe(int fds[2]) {
  uint64_t v = __atomic_exchange_n(&spare_pipe, 0, __ATOMIC_ACQ_REL);
  if (!v) return 0;
  pipe_fds(v, fds);
  return 1;
}

/* Keep an empty result pipe (both ends, none other than ours: keep set)
   for the next spawn, or close it. */
static void keep_pipe(int fds[2], int keep) {
  uint64_t none = 0;
  if (fds[0] < 0) return;
  if (!keep || fds[1] < 0 ||
      !__atomic_compare_exchange_n(&spare_pipe, &none, pipe_word(fds), 0, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    pt_close(fds[0]);
    pt_close(fds[1]);
  }
  fds[0] = fds[1] = -1;
}

int pt_process_spare_fds(void) {
  return (__atomic_load_n(&spare_drain, __ATOMIC_ACQUIRE) > 0) +
         2 * (__atomic_load_n(&spare_pipe, __ATOMIC_ACQUIRE) != 0);
}

/* Keep the drain_fd of an ended child, or close it.  Its count is read
   back to 0 only when the child may have rung it (rung): a child that
   never did leaves it at 0, and the read was one more system call a
   spawn.  The read is raw (rawsys.h): its EAGAIN written to errno was a
   fault of the thread's page. */
static void keep_drain(int fd, int rung) {
  uint64_t v;
  long k = sizeof v;
  int none = 0;
  if (fd < 0) return;
  if (rung) k = pt_rawsys(SYS_read, fd, (long)&v, sizeof v, 0);
  if ((k == (long)sizeof v || k == -EAGAIN) &&
      __atomic_compare_exchange_n(&spare_drain, &none, fd + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    return;
  pt_close(fd);
}

/* In the child of every fork (procthread's spawns, pt_after_fork_child;
   any other fork(), pthread_atfork): the kept eventfd and a worker's
   result pipe are the parent's.  A bare fork()'s child of a worker that
   returns from fn then sends nothing down its parent's pipe (the write
   fails: no fd), and one of the main process never shares the kept
   eventfd with its parent. */
PT_CHILD_PATH static void forget_parent(void) {
  int kept = __atomic_load_n(&spare_drain, __ATOMIC_RELAXED);
  uint64_t pipe = __atomic_load_n(&spare_pipe, __ATOMIC_RELAXED);
  if (kept > 0) {                        /* the parent's, made before the fork */
    pt_raw_close(kept - 1);
    spare_drain = 0;
  }
  if (pipe) {                            /* the same (a spawn took its own before) */
    int fds[2];
    pipe_fds(pipe, fds);
    pt_raw_close(fds[0]);
    pt_raw_close(fds[1]);
    spare_pipe = 0;
  }
  if (my_result_fd < 0) return;          /* a child of the main process: nothing more */
  pt_raw_close(my_result_fd);
  if (my_drain_fd >= 0) pt_raw_close(my_drain_fd);
  if (my_result_rfd >= 0) pt_raw_close(my_result_rfd);
  my_result_fd = my_drain_fd = my_result_rfd = -1;
}

static pthread_once_t forget_once = PTHREAD_ONCE_INIT;
static void watch_forks(void) { (void)pthread_atfork(NULL, NULL, forget_parent); }

/* The results do not fit the pipe: the parent must read them as they
   come.  Ring its drain_fd (once), then wait for room -- or for the
   parent's end.  A parent gone (a detached worker outlives it) reads
   nothing more, and the write alone need never fail: the read end lives
   on in the other processes it forked (and in this one, which drops its
   copy here: with no reader left the write fails with EPIPE/SIGPIPE).  So
   the wait also watches a pidfd of the parent.  0: write again; -1: give
   up (the worker leaves).  Out of line: inlined into write_all, its
   pollfd set up from a constant in .rodata cost every child a read fault
   there. */
__attribute__((noinline, cold)) static int wait_room(int fd) {
  static int parent_fd = -2;          /* -2: not spilled yet; -1: no pidfd */
  struct pollfd p[2];
  if (parent_fd == -2) {
    uint64_t one = 1;
    if (write(my_drain_fd, &one, sizeof one) < 0) return -1;
    pt_close(my_result_rfd);
    my_result_rfd = -1;
    parent_fd = (int)syscall(SYS_pidfd_open, my_parent, 0);
    /* still our parent after the pidfd was made: the pidfd is its */
    if (getppid() != my_parent) return -1;
  }
  p[0].fd = fd; p[0].events = POLLOUT; p[0].revents = 0;
  p[1].fd = parent_fd; p[1].events = POLLIN; p[1].revents = 0;   /* -1: ignored */
  while (poll(p, 2, -1) < 0)
    if (errno != EINTR) return -1;
  return p[1].revents ? -1 : 0;       /* else room, or no reader: the write says */
}

/* The write end is non-blocking: results that fit the pipe never wake
   the parent before the child's end (it sleeps on the pidfd alone).  When
   the pipe is full, wait_room. */
PT_CHILD_PATH static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    long k = pt_raw_write(fd, p, n);       /* -errno: rawsys.h */
    if (k < 0) {
      if (k == -EINTR) continue;
      if (k != -EAGAIN || wait_room(fd) != 0) return -1;
      continue;
    }
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

PT_CHILD_PATH static void send_result(int kind, const char *p, size_t n) {
  char hdr[HDR];
  uint64_t len = n;
  hdr[0] = (char)kind;
  memcpy(hdr + 1, &len, 8);
  if (write_all(my_result_fd, hdr, HDR) == 0) write_all(my_result_fd, p, n);
}

/* A worker process leaves: first its own thread workers are cancelled
   and given a second to end, so that pt_child_exit may drop the
   shared-memory counts this process holds (it keeps them, leaked, while
   a thread still runs). */
PT_CHILD_PATH static void leave(int code) {
  /* no thread: no call (its argument, a double, is a page of rodata) */
  if (__atomic_load_n(&pt_live_threads, __ATOMIC_SEQ_CST) != 0) pt_lifecycle_stop_threads(1.0);
  pt_child_exit(code);
}

/* os.exit inside a worker process: flush this process's own output and
   leave with the code, never running the parent's atexit handlers. */
static int child_os_exit(lua_State *L) {
  int code;
  if (lua_isnoneornil(L, 1)) code = 0;
  else if (lua_type(L, 1) == LUA_TBOOLEAN) code = lua_toboolean(L, 1) ? 0 : 1;
  else code = (int)luaL_checkinteger(L, 1);
  leave(code);
  return 0;
}

/* The child runs on a copy of the caller's stack: the frames below fn are
   the parent's.  parent_levels counts them (taken without allocating, so
   the child copies no page for it); msgh cuts them off the traceback. */
static int parent_levels;

/* How many levels the stack has.  lua_getstack walks the call chain, so
   probing every level is quadratic: a stack overflow (some 200000 levels)
   would never finish.  Double, then bisect, as luaL_traceback does. */
static int count_levels(lua_State *L) {
  lua_Debug ar;
  int have = 0, lack = 1;                  /* levels < have exist; lack does not */
  while (lua_getstack(L, lack, &ar)) { have = lack + 1; lack *= 2; }
  if (!lua_getstack(L, 0, &ar)) return 0;
  if (have == 0) have = 1;
  while (have < lack) {
    int m = have + (lack - have) / 2;
    if (lua_getstack(L, m, &ar)) have = m + 1; else lack = m;
  }
  return have;
}

static int msgh(lua_State *L) {
  int total = count_levels(L);
  pt_traceback(L, L, pt_tomessage(L, 1), 1);
  if (parent_levels > 0 && total > parent_levels) {
    /* the first parent frame, as the traceback writes it: cut there */
    const char *tb, *first, *head, *nl, *cut = NULL;
    pt_traceback(L, L, "", total - parent_levels);
    first = lua_tostring(L, -1);
    head = strstr(first, "traceback:");
    nl = head ? strchr(head, '\n') : NULL;
    tb = lua_tostring(L, -2);
    if (nl) {
      const char *end = strchr(nl + 1, '\n');
      size_t n = end ? (size_t)(end - nl) : strlen(nl);
      lua_pushlstring(L, nl, n);
      cut = strstr(tb, lua_tostring(L, -1));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (cut) lua_pushlstring(L, tb, (size_t)(cut - tb));
  }
  return 1;
}

/* cancel is SIGTERM: the child takes it whatever the parent does with it.
   Forked from a thread worker, which runs with every signal blocked but
   one, the child unblocks them all: a process takes signals as a process
   does.  Raw system calls (rawsys.h): libc's sigemptyset, sigaction and
   pthread_sigmask are pages of code to fault in. */
PT_CHILD_PATH static void take_sigterm(int from_thread) {
#if PT_RAWSYS_NATIVE
  /* the kernel's struct sigaction (x86-64): handler, flags, restorer, mask */
  struct { void *handler; unsigned long flags; void *restorer; unsigned long mask; } dfl;
  dfl.handler = NULL;                      /* SIG_DFL */
  dfl.flags = 0;
  dfl.restorer = NULL;
  dfl.mask = 0;
  pt_rawsys(SYS_rt_sigaction, SIGTERM, (long)&dfl, 0, 8);
  if (from_thread) pt_raw_sigmask(SIG_SETMASK, 0);
  else pt_raw_sigmask(SIG_UNBLOCK, pt_raw_sigbit(SIGTERM));
#else
  struct sigaction dfl;
  sigset_t set;
  dfl.sa_handler = SIG_DFL;
  dfl.sa_flags = 0;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGTERM, &dfl, NULL);
  sigemptyset(&set);
  if (from_thread) {
    pthread_sigmask(SIG_SETMASK, &set, NULL);
  } else {
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  }
#endif
}

/* The child: stack is the handle, fn, args..., then what the parent
   prepared (prepare_child): the os table or nil, "exit", child_os_exit.
   Never returns.  Every page it writes is a copy-on-write fault, and every
   page of code it runs that the fork did not map is a fault too, so the
   happy path allocates nothing it can avoid (no traceback text up front,
   no encoder state for no results, no stack rotation), makes no string
   (a new one writes the string cache and runs strcmp and memcmp), and its
   code sits together (PT_CHILD_PATH). */
PT_CHILD_PATH static void child_main(lua_State *L, const int fds[2], int drain_fd, int levels,
                                     pid_t parent) {
  int n, base = 1;
  pt_after_fork_child();
  parent_levels = levels;                  /* a page the child writes anyway */
  my_result_fd = fds[1];
  my_result_rfd = fds[0];
  my_drain_fd = drain_fd;
  my_parent = parent;
  take_sigterm(pt_self_ctx && pt_self_ctx->kind == PT_THREAD);
  pt_self_ctx = &process_ctx;
  if (lua_istable(L, -3)) lua_rawset(L, -3);   /* os.exit = child_os_exit */
  else lua_pop(L, 2);
  lua_pop(L, 1);
  n = lua_gettop(L) - 1;                   /* fn and its arguments */
  lua_pushcfunction(L, msgh);
  lua_replace(L, 1);                       /* over the handle: no stack rotation */
  if (lua_pcall(L, n - 1, LUA_MULTRET, 1) != 0) {
    size_t len;
    const char *m = lua_tolstring(L, -1, &len);
    if (!m) m = "(error object is not a string)", len = strlen(m);
    send_result(1, m, len);
    leave(1);
  } else if (lua_gettop(L) == base) {
    send_result(0, NULL, 0);                 /* no "" literal: a page of rodata */
    leave(0);
  }
  send_results(L, base);
}

/* Encode and send the results above base, then leave.  Apart from
   child_main: its error buffer does not deepen the stack of every child
   (a deeper page is one more fault). */
static void send_results(lua_State *L, int base) {
  char err[PT_ERRLEN];
  pt_buf b;
  pt_buf_init(&b);
  if (pt_encode(L, base + 1, lua_gettop(L) - base, "results", &b, err, sizeof err)) {
    send_result(0, b.data, b.len);
    leave(0);
  }
  send_result(1, err, strlen(err));
  leave(1);
}

/* In the parent, before the fork: what the child needs, made where the
   parent writes anyway (its pages are shared, not copied, when the child
   only reads them).  On the stack os, "exit" and child_os_exit, so that
   the child sets os.exit with one rawset; os is looked up raw: no
   metamethod can raise here (none could be answered in the child
   either).  Returns the levels of the stack below fn (for parent_levels:
   a static set by the child, as two threads may spawn at once). */
static int prepare_child(lua_State *L) {
  int levels = count_levels(L);
  pt_pushglobals(L);
  lua_pushliteral(L, "os");
  lua_rawget(L, -2);
  lua_remove(L, -2);
  lua_pushliteral(L, "exit");
#if LUA_VERSION_NUM >= 502
  lua_pushcfunction(L, child_os_exit);     /* a light C function: nothing made */
#else
  /* a closure each time: kept in the registry, made once per state */
  lua_pushlightuserdata(L, (void *)&process_ctx);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (!lua_isfunction(L, -1)) {
    lua_pop(L, 1);
    lua_pushcfunction(L, child_os_exit);
    lua_pushlightuserdata(L, (void *)&process_ctx);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
#endif
  return levels;
}

/* Spawning failed after the handle was made: the handle becomes an
   already-ended worker nobody will see; report the OS error. */
static int spawn_failed(lua_State *L, pt_worker *w, const char *op, int e) {
  w->joined = 1;
  w->done = 1;
  w->status = W_FAILED;
  pt_worker_unref(w);
  return pt_push_oserror(L, op, e);
}

PT_CHILD_PATH static int process_spawn(lua_State *L) {
  int fds[2], life[2], e, levels;
  pid_t pid, me = pt_pid();
  process_worker *p;
  pt_worker *w;
  pt_shm_counts held;       /* the fork's: on the stack, which the child writes anyway */
  sigset_t term_only, mask;
  pt_spawn_check(L, &pt_process_ops, 4);   /* handle, prepare_child */
  reap_orphans();
  (void)pt_shm_ensure();    /* shared with the child if it can be; not needed */
  pt_atfork_child(forget_parent);
  pthread_once(&forget_once, watch_forks);
  p = record_new();
  if (!p) return pt_push_oserror(L, pt_spawn_name(L, &pt_process_ops), ENOMEM);
  w = &p->w;
  p->pidfd = p->result_fd = p->result_wfd = p->drain_fd = p->user_aux[0] = p->user_aux[1] = -1;
  /* the handle exists before the fork: the parent then writes less of the
     memory it shares copy-on-write with the child while the child runs */
  pt_worker_push(L, w);
  lua_insert(L, 1);
  w->refs = 2;
  /* both ends non-blocking: see write_all */
  if (!take_pipe(fds) && pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    e = errno;
    return spawn_failed(L, w, "pipe", e);
  }
  p->drain_fd = __atomic_exchange_n(&spare_drain, 0, __ATOMIC_ACQ_REL) - 1;
  if (p->drain_fd < 0) p->drain_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (p->drain_fd < 0) {
    e = errno;
    keep_pipe(fds, 1);                /* empty, and no child had it */
    return spawn_failed(L, w, "eventfd", e);
  }
  pt_flush_stdio();         /* the child must not write our buffered output again */
  w->t_start = pt_clock_now();
  levels = prepare_child(L);
  /* no list is caught half-changed by the fork.  Lock order: orphans,
     then the lifecycle registry (the reaper settles under orphan_lock and
     leaves the registry). */
  pthread_mutex_lock(&orphan_lock);
  if (pt_lifeline_prefork(life) != 0) {
    e = errno;
    pthread_mutex_unlock(&orphan_lock);
    keep_pipe(fds, 1);
    return spawn_failed(L, w, "pipe", e);
  }
  /* SIGTERM blocked across the fork: a cancel that reaches the child
     before take_sigterm stays pending until the child's disposition is
     the default, rather than meeting the parent's (ignored: lost; a
     handler: the parent's code run in the child) */
  sigemptyset(&term_only);
  sigaddset(&term_only, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term_only, &mask);
  pid = pt_shm_fork(&held);
  e = pid < 0 ? errno : 0;  /* the child reads no errno (libc's code: PT_AFTER_FORK) */
  if (pid != 0) pthread_sigmask(SIG_SETMASK, &mask, NULL);
  if (pid == 0) {           /* the parent's children are not ours (no write when none) */
    if (orphans) orphans = NULL;
    if (reaper_running) reaper_running = 0;
    pt_mutex_reset(&orphan_lock);   /* its unlock: libc's code (PT_AFTER_FORK) */
  } else {
    pthread_mutex_unlock(&orphan_lock);
  }
  if (pid == 0) pt_lifeline_child(life);
  else pt_lifeline_parent(L, w, life, pid > 0);
  if (pid < 0) {
    keep_pipe(fds, 1);
    return spawn_failed(L, w, "fork", e);
  }
  /* the child keeps the read end until its results fill the pipe (a
     close now would cost every child a system call): see wait_room */
  if (pid == 0) child_main(L, fds, p->drain_fd, levels, me);
  pw(w)->held = held;
  w->id = pid;
  pw(w)->result_fd = fds[0];
  pw(w)->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);   /* -1: fall back to polling */
  /* the write end kept for the next spawn (spare_pipe); without a pidfd
     the join waits for the pipe's hang-up, which needs it closed */
  if (pw(w)->pidfd >= 0) pw(w)->result_wfd = fds[1];
  else close(fds[1]);
  pt_worker_unref(w);              /* the handle's reference remains */
  lua_settop(L, 1);
  return 1;
}

/* The payload's length once the header is in; 0 before. */
static uint64_t payload_len(const process_worker *p) {
  uint64_t len = 0;
  if (p->head_len == HDR) memcpy(&len, p->head + 1, 8);
  return len;
}

/* Read what the pipe holds now: the header into the record, then the
   payload, whose length it gives, into w->result (grown as it comes, at
   most 1 MiB a step: the parent writes, and faults in copy-on-write, no
   more pages than the results need, and a wrong length cannot make it
   reserve much).  Nothing is read past the payload.  0 ok (maybe more
   later), -1 error. */
static int drain(pt_worker *w) {
  process_worker *p = pw(w);
  pt_buf *b = &w->result;
  for (;;) {
    ssize_t k;
    size_t room;
    char *at;
    if (p->head_len < HDR) {
      at = p->head + p->head_len;
      room = (size_t)(HDR - p->head_len);
    } else {
      uint64_t left = payload_len(p) - b->len;
      if (left == 0) return 0;                  /* complete */
      if (b->len == b->cap &&
          pt_buf_reserve(b, left < ((size_t)1 << 20) ? (size_t)left : ((size_t)1 << 20))) {
        errno = ENOMEM;
        return -1;
      }
      room = b->cap - b->len;
      if (room > left) room = (size_t)left;
      at = b->data + b->len;
    }
    k = read(p->result_fd, at, room);
    if (k > 0) {
      if (p->head_len < HDR) p->head_len += (int)k;
      else b->len += (size_t)k;
      if ((size_t)k < room) return 0;          /* a pipe reads short only when empty */
      continue;
    }
    if (k == 0) return 0;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return 0;
    return -1;
  }
}

static double tv(struct timeval t) { return (double)t.tv_sec + (double)t.tv_usec * 1e-6; }

static int result_complete(pt_worker *w) {
  return pw(w)->head_len == HDR && payload_len(pw(w)) == w->result.len;
}

/* Why wait4 found no child: the kernel reaped it (SIGCHLD ignored, or
   SA_NOCLDWAIT), or another part of the program did. */
static const char *why_unknown(void) {
  struct sigaction sa;
  if (sigaction(SIGCHLD, NULL, &sa) == 0 &&
      (sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_NOCLDWAIT)))
    return "exit status unknown: SIGCHLD is ignored, so the kernel reaped the process";
  return "exit status unknown: the process was reaped by another part of the program";
}

/* The child has ended: settle the outcome from its exit status st and
   rusage ru, or (ru NULL) from what it sent alone. */
static void settle(pt_worker *w, int st, struct rusage *ru) {
  int complete;
  drain(w);
  w->t_end = pt_clock_now();
  if (ru) {
    w->cpu_user = tv(ru->ru_utime);
    w->cpu_sys = tv(ru->ru_stime);
    w->max_rss_kib = ru->ru_maxrss;
    if (WIFEXITED(st)) w->exit_code = WEXITSTATUS(st);
    if (WIFSIGNALED(st)) w->signal = WTERMSIG(st);
  }
  complete = result_complete(w);
  if (complete) {
    int kind = pw(w)->head[0];
    w->result_is_error = kind != 0;
    w->status = kind == 0 ? W_SUCCEEDED : W_FAILED;
  } else {
    /* results that did not arrive whole: release the references of the
       parts that did (the discard walks a cut buffer safely) */
    if (pw(w)->head_len == HDR && pw(w)->head[0] == 0 && w->result.len > 0)
      pt_discard(w->result.data, w->result.len);
    w->result.len = 0;
    w->result_is_error = 1;
    w->status = W_FAILED;
    if (!ru) pt_buf_add(&w->result, why_unknown(), strlen(why_unknown()));
  }
  /* cancelled while it ran (w_cancel): cancelled, however it ended */
  if (w->cancel) w->status = W_CANCELLED;
  /* the pipe is kept when the child has ended (so none holds its write
     end but its own forks, which close it: forget_parent) having sent
     its results whole (the pipe is empty), and no w:fd() watches it */
  {
    int pipe[2];
    pipe[0] = pw(w)->result_fd;
    pipe[1] = pw(w)->result_wfd;
    keep_pipe(pipe, complete && pw(w)->user_aux[0] < 0);
    pw(w)->result_fd = pw(w)->result_wfd = -1;
  }
  pt_close(pw(w)->pidfd);
  /* a child rings drain_fd only when a write of its results met a full
     pipe: results whole and within PIPE_BUF, written to an empty pipe
     (any pipe holds that much), never did, and no read is needed */
  keep_drain(pw(w)->drain_fd, pw(w)->spilled || !complete || payload_len(pw(w)) > PIPE_BUF - HDR);
  pw(w)->pidfd = pw(w)->drain_fd = -1;
  w->joined = 1;
  pt_shm_counts_drop(&pw(w)->held);    /* what it inherited: it has ended */
  __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
  pt_lifecycle_remove(w);
}

/* Try to reap without blocking: 1 reaped, 0 still running, -1 error. */
static int try_reap(pt_worker *w) {
  int st;
  struct rusage ru;
  pid_t r;
  do r = wait4(w->id, &st, WNOHANG, &ru); while (r < 0 && errno == EINTR);
  if (r < 0 && errno == ECHILD) {          /* gone, and its status with it */
    settle(w, 0, NULL);
    return 1;
  }
  if (r < 0) return -1;
  if (r == 0) return 0;
  settle(w, st, &ru);
  return 1;
}

/* The results are in, or every write end of the result pipe is closed:
   the pipe has nothing more to say (it would stay readable). */
static int pipe_done(pt_worker *w) {
  struct pollfd p;
  if (result_complete(w)) return 1;
  p.fd = pw(w)->result_fd; p.events = POLLIN; p.revents = 0;
  return poll(&p, 1, 0) == 1 && (p.revents & POLLHUP) && !(p.revents & POLLIN);
}

/* One look: read what results came; reap (one wait4) when `reap` says
   it may have ended.  1 ended, -1 error (errno); 0 running: sleep until
   one of fds[0..*n) is readable (the pipe while it has more to say, the
   pidfd), or (*slice: no pidfd) a short while, then look again. */
static int look(pt_worker *w, int reap, int fds[2], int *n, int *slice) {
  process_worker *p = pw(w);
  int r;
  *n = 0;
  *slice = 0;
  if (w->joined) return 1;
  if (drain(w) != 0) return -1;
  if (reap && (r = try_reap(w)) != 0) return r;
  if (!pipe_done(w)) fds[(*n)++] = p->result_fd;
  if (p->pidfd >= 0) fds[(*n)++] = p->pidfd;
  else *slice = 1;
  return 0;
}

/* No spinning, one sleep: results that fit the pipe wait there, so the
   join sleeps on the pidfd alone (and drain_fd, which the child rings when
   its results do not fit) and reaps with one wait4 when the pidfd says
   the child has ended; then settle reads the results.  Results too big
   for the pipe, or no pidfd: sleep on the pipe too, reading as they come
   (look).  A pidfd that says ended while wait4 does not yet (a tracer is
   told first) is looked at again every millisecond, not spun on. */
/* Has the child said its results do not fit the pipe (then they must be
   read for it to end)?  Remembered: every later wait reads as it goes.
   A wait that sleeps learns it from the sleep (drain_fd readable) and
   reads nothing before it; one that ends without sleeping (a timeout,
   join(0)) looks here, so polling alone still lets such a child end. */
static int spilled(process_worker *p) {
  uint64_t v;
  if (!p->spilled && p->drain_fd >= 0 && read(p->drain_fd, &v, sizeof v) == (ssize_t)sizeof v)
    p->spilled = 1;
  return p->spilled;
}

static int process_wait(pt_worker *w, double timeout) {
  process_worker *p = pw(w);
  double deadline = timeout < 0 ? -1 : pt_clock_now() + timeout;
  int reap = timeout == 0 || p->pidfd < 0, ended = 0, fits;
  if (w->joined) return 1;
  reap_orphans();
  for (;;) {
    int fds[2], n = 0, slice = 0, r;
    double left;
    fits = p->pidfd >= 0 && !p->spilled;
    if (fits) {
      if ((reap || ended) && (r = try_reap(w)) != 0) return r;
    } else if ((r = look(w, reap || ended, fds, &n, &slice)) != 0) {
      return r;
    }
    left = deadline < 0 ? -1 : deadline - pt_clock_now();
    if (deadline >= 0 && left <= 0) {
      if (fits && spilled(p)) continue;       /* read what it has sent, once */
      return 0;
    }
    if (fits) {
      fds[n++] = p->pidfd;
      fds[n++] = p->drain_fd;
    }
    if (ended) n = 0;         /* ended, not yet reapable: a tracer (strace) is told first */
    if ((slice || ended) && (left < 0 || left > (n ? 0.01 : 0.001))) left = n ? 0.01 : 0.001;
    r = pt_wait_fds(fds, n, POLLIN, left);
    if (r == -1 || r == -2) return r;
    if (fits && r >= 0 && fds[r] == p->drain_fd) p->spilled = 1;
    ended = ended || (r >= 0 && fds[r] == p->pidfd);
    reap = slice;
  }
}

int pt_process_watch(pt_worker *w, int fds[2], int *n, int *slice) {
  return look(w, 1, fds, n, slice);
}

/* Watch a dup of fd (kept in *aux) from the epoll ep. */
static int watch_dup(int ep, int fd, int *aux) {
  struct epoll_event ev;
  if (fd < 0) return 0;
  *aux = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (*aux < 0) return -1;
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN;
  return epoll_ctl(ep, EPOLL_CTL_ADD, *aux, &ev);
}

/* The dups stay open with the record, so the epoll keeps watching them
   after a join closed the originals: it stays readable. */
static int process_fd(pt_worker *w) {
  int ep = epoll_create1(EPOLL_CLOEXEC), e;
  if (ep < 0) return -1;
  if (watch_dup(ep, pw(w)->result_fd, &pw(w)->user_aux[0]) == 0 &&
      watch_dup(ep, pw(w)->pidfd, &pw(w)->user_aux[1]) == 0)
    return ep;
  e = errno;
  pt_close(ep);
  pt_close(pw(w)->user_aux[0]);
  pt_close(pw(w)->user_aux[1]);
  pw(w)->user_aux[0] = pw(w)->user_aux[1] = -1;
  errno = e;
  return -1;
}

static int process_signal(pt_worker *w, int sig) {
  if (w->joined) return ESRCH;
  if (pw(w)->pidfd >= 0) {
    if (syscall(SYS_pidfd_send_signal, pw(w)->pidfd, sig, NULL, 0) == 0) return 0;
    if (errno != ENOSYS) return errno;
  }
  return kill(w->id, sig) == 0 ? 0 : errno;
}

/* A collected handle of a live child becomes an orphan: one reaper
   thread waits for the orphans while there are any (it drains their
   result pipes, so none blocks on a full pipe) and ends with the last.
   When no thread can be started, the next spawn_process, join or
   collected handle reaps them.  A finalizer never blocks. */
static void reap_pass(void) {                 /* orphan_lock held */
  process_worker **p = &orphans;
  while (*p) {
    process_worker *o = *p;
    drain(&o->w);                     /* what is lost on ENOMEM stays lost */
    if (try_reap(&o->w) != 0) {
      *p = o->next;
      pt_worker_unref(&o->w);
    } else {
      p = &o->next;
    }
  }
}

static void *reaper(void *arg) {
  (void)arg;
  pthread_mutex_lock(&orphan_lock);
  for (;;) {
    struct pollfd p[64];
    int n = 0, ms = 100;
    process_worker *w;
    reap_pass();
    if (!orphans) break;
    for (w = orphans; w && n < 63; w = w->next) {
      p[n].fd = w->result_fd; p[n].events = POLLIN; p[n++].revents = 0;
      if (w->pidfd < 0) ms = 10;             /* no pidfd: poll for its end */
      else { p[n].fd = w->pidfd; p[n].events = POLLIN; p[n++].revents = 0; }
    }
    pthread_mutex_unlock(&orphan_lock);   /* only this thread reaps now */
    poll(p, (nfds_t)n, ms);
    pthread_mutex_lock(&orphan_lock);
  }
  reaper_running = 0;
  pthread_mutex_unlock(&orphan_lock);
  return NULL;
}

static int start_reaper(void) {
  pthread_t t;
  pthread_attr_t a;
  sigset_t all, old;
  int ok;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&a, 64 * 1024);
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  ok = pthread_create(&t, &a, reaper, NULL) == 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&a);
  return ok;
}

/* Reap what orphans have ended, unless the reaper thread does. */
static void reap_orphans(void) {
  pthread_mutex_lock(&orphan_lock);
  if (!reaper_running) reap_pass();
  pthread_mutex_unlock(&orphan_lock);
}

static void process_release(pt_worker *w) {
  reap_orphans();
  if (w->joined || try_reap(w) != 0) {
    pt_worker_unref(w);
    return;
  }
  pthread_mutex_lock(&orphan_lock);
  pw(w)->next = orphans;
  orphans = pw(w);
  if (!reaper_running) reaper_running = start_reaper();
  pthread_mutex_unlock(&orphan_lock);
}

/* Still running: SIGTERM, and it ends "cancelled" however it ends (see
   settle). */
static int process_cancel(pt_worker *w) {
  if (process_wait(w, 0) != 0) return 0;
  w->cancel = 1;
  return process_signal(w, SIGTERM);
}

static void process_destroy(pt_worker *w) {
  process_worker *p = pw(w);
  free(p->held.v);   /* never reaped: it may run on, so its counts stay (a leak, not a free under it) */
  pt_close(p->pidfd);
  pt_close(p->result_fd);
  pt_close(p->result_wfd);
  pt_close(p->drain_fd);
  pt_close(p->user_aux[0]);
  pt_close(p->user_aux[1]);
  record_free(p);
}

const pt_worker_ops pt_process_ops = {
  "process", process_spawn, process_wait, process_cancel, process_signal, NULL, NULL,
  process_fd, process_release, process_destroy, NULL};
