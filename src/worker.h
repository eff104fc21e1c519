/* worker.h - the worker record and the operations of a kind of worker.
 *
 * Layers (each file uses only those below it; none calls back up):
 *   core.c        registers the kinds (pt_thread_ops, pt_process_ops)
 *   thread.c      the thread kind: fills pt_thread_ops
 *   process.c     the process kind: fills pt_process_ops
 *   worker.c      the handle and its methods, pt.spawn: calls w->ops only
 *   lifecycle.c   the registry of live workers (at exit, thread stop),
 *                 the lifeline, Ctrl-C: calls w->ops only
 * A record is a common header (pt_worker) that the kind's own record
 * begins with; the kind's ops know the rest. */
#ifndef PT_WORKER_H
#define PT_WORKER_H

#include <pthread.h>
#include "pt.h"

#define PT_WORKER_MT "procthread.Worker"

enum { W_RUNNING = 0, W_SUCCEEDED, W_FAILED, W_CANCELLED };

typedef struct pt_worker pt_worker;

/* What a kind of worker does.  Every function is given the record of its
   own kind.  Waits return 1 ended, 0 timeout, -2 the caller was cancelled
   (or interrupted), -1 error (errno); the others 0 or an errno. */
typedef struct pt_worker_ops {
  const char *name;                       /* "thread", "process" */
  lua_CFunction spawn;                    /* pt.spawn_<name>(fn, ...) */
  int (*wait)(pt_worker *w, double timeout);
  int (*cancel)(pt_worker *w);
  /* kill: NULL when the kind cannot be sent a signal, and why not */
  int (*signal)(pt_worker *w, int sig);
  const char *no_signal;
  const char *no_detach;                  /* pt.detach: NULL, or why not */
  int (*fd)(pt_worker *w);                /* w:fd(), not yet ended; -1 errno */
  void (*release)(pt_worker *w);          /* the handle was collected */
  void (*destroy)(pt_worker *w);          /* the last reference went */
  int (*spare)(void);                     /* OS threads kept idle, or NULL */
} pt_worker_ops;

/* A record lives outside any Lua heap, shared by its handle, the registry
   and (thread) the running thread: each holds a reference. */
struct pt_worker {
  const pt_worker_ops *ops;
  int kind;                   /* PT_THREAD or PT_PROCESS */
  int refs;                   /* atomic */
  int id;                     /* atomic: pid, or kernel thread id (0 until known) */
  int done;                   /* atomic: 1 once the outcome below is final */
  int status;                 /* W_*: read only after done is seen set */
  int cancel;                 /* atomic: cancellation asked */
  int joined;                 /* thread joined / process reaped (owner only) */
  int user_fd;                /* w:fd(): readable once done, or -1; closed
                                 with the record */
  pt_buf result;              /* encoded results, or the error message */
  int result_is_error;
  double t_start, t_end;
  double cpu_user, cpu_sys;
  long max_rss_kib;
  int exit_code, signal;      /* process: -1 when not applicable */
  const pt_ctx *self;         /* thread: its own identity; else NULL */
  /* lifecycle.c's registry (under its lock): listed from spawn to end */
  struct pt_worker *prev, *next;
  int listed;
  const void *owner;          /* the main Lua state that spawned it, or NULL */
  int lifeline, lifeline_r;   /* process: its lifeline's ends, or -1 */
  unsigned lifeline_forks;    /* process: forks made by then (lifecycle.c) */
  int released;               /* its handle was collected */
  int daemon;                 /* a pool's worker: stopped, never waited for
                                 (2: a pool's watcher, not counted at exit) */
  int adopted;                /* thread: handle collected while it ran (a
                                 cancel at exit still reaches it) */
  int handled;                /* an at-exit pass stopped it already */
};

/* worker.c */
/* Make the common part of a record of `size` bytes (the kind's record
   begins with pt_worker): one reference.  NULL: out of memory. */
pt_worker *pt_worker_new(const pt_worker_ops *ops, int kind, size_t size);
/* The kind's destroy ends with this: free the common part and w. */
void pt_worker_free(pt_worker *w);
/* The same for a record the kind keeps itself: w zeroed, then made as
   pt_worker_new makes it; fini gives back what the common part holds,
   not w. */
void pt_worker_init(pt_worker *w, const pt_worker_ops *ops, int kind);
void pt_worker_fini(pt_worker *w);
static inline void pt_worker_ref(pt_worker *w) {
  __atomic_add_fetch(&w->refs, 1, __ATOMIC_ACQ_REL);
}
static inline void pt_worker_unref(pt_worker *w) {
  if (__atomic_sub_fetch(&w->refs, 1, __ATOMIC_ACQ_REL) == 0) w->ops->destroy(w);
}
/* Push a new handle for w (the handle takes one reference). */
void pt_worker_push(lua_State *L, pt_worker *w);
/* The record of the worker handle at index i for pt.select: 0 when it is
   not a worker handle; else 1, *w NULL when the handle was collected or
   belongs to another process. */
int pt_worker_get(lua_State *L, int i, pt_worker **w);
/* For a kind's spawn: the name its errors give, "spawn" when pt.spawn
   called it, else "spawn_<kind>" (pushed: the stack keeps it). */
const char *pt_spawn_name(lua_State *L, const pt_worker_ops *ops);
/* For a kind's spawn, first: fn (index 1) is a function, and the stack
   has `room` slots more; else raise, naming the spawn. */
void pt_spawn_check(lua_State *L, const pt_worker_ops *ops, int room);
/* core.c: make a kind known to pt.spawn (once per process, before use). */
void pt_worker_register(const pt_worker_ops *ops);

/* thread.c */
extern const pt_worker_ops pt_thread_ops;
/* The eventfd the thread writes at its end (made on first call), or -1
   (errno).  After the call, look at w->done once more before sleeping. */
int pt_thread_done_fd(pt_worker *w);
/* The thread worker w (ended or not) sends the len bytes at msg (an
   encoded message of plain values, malloc'd: taken over) on the queue q
   of generation gen (one count taken for it: taken over) if it ends
   before its function runs; else they are dropped (thread.c, for pools'
   ch:_end_note). */
void pt_thread_end_note(pt_worker *w, uint64_t q, uint64_t gen, char *msg, size_t len);

/* process.c */
extern const pt_worker_ops pt_process_ops;
/* For pt.select: read what results came, reap if it ended.  1 ended, -1
   error (errno); 0 running: sleep until one of fds[0..*n) is readable,
   then call again (*n may be 0: no pidfd, and the results are in; then
   *slice is set and the caller looks again after a short while). */
int pt_process_watch(pt_worker *w, int fds[2], int *n, int *slice);
/* fds kept open for the next process spawn (0 or 1: a drain eventfd) */
int pt_process_spare_fds(void);

/* lifecycle.c: the registry (pt.h declares the rest) */
/* Cancel every thread worker of this process and wait up to timeout for
   pt_live_threads to reach 0 (each thread counts itself down, and wakes
   the word, once it has touched its last shared object); returns how
   many still run. */
int pt_lifecycle_stop_threads(double timeout);

#endif
