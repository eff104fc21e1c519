/* worker.h - the worker record shared by worker.c, thread.c, process.c. */
#ifndef PT_WORKER_H
#define PT_WORKER_H

#include <pthread.h>
#include "pt.h"
#include "shm.h"

#define PT_WORKER_MT "procthread.Worker"

enum { W_RUNNING = 0, W_SUCCEEDED, W_FAILED, W_CANCELLED };

/* A worker record lives outside any Lua heap.  A thread record is shared
   by the handle and the running thread (refs); a process record belongs
   to its handle, or to a reaper thread once the handle is collected. */
typedef struct pt_worker {
  int kind;                   /* PT_THREAD or PT_PROCESS */
  int refs;                   /* atomic */
  int id;                     /* atomic: pid, or kernel thread id (0 until known) */
  int done;                   /* atomic: 1 once the outcome below is final */
  int status;                 /* W_*: read only after done is seen set */
  int cancel;                 /* atomic (thread): cancellation asked */
  int done_fd;                /* thread: eventfd made by a cancellable joiner,
                                 or -1; process: pidfd or -1 */
  int cancel_fd;              /* thread: eventfd */
  int user_fd;                /* w:fd(): readable once done, or -1; closed
                                 with the record */
  int user_aux[2];            /* process: the fds user_fd (an epoll) watches */
  int result_fd;              /* process: read end of the result pipe */
  pt_buf job;                 /* thread: encoded fn and args */
  pt_buf result;              /* encoded results, or the error message */
  int result_is_error;
  char *path, *cpath;         /* thread: package.path / cpath to use */
  pthread_t thread;
  int joined;                 /* thread joined / process reaped (owner only) */
  struct pt_worker *prev, *next;  /* thread: the list of running threads */
  double t_start, t_end;
  double cpu_user, cpu_sys;
  long max_rss_kib;
  int exit_code, signal;      /* process: -1 when not applicable */
  pt_ctx ctx;                 /* thread: its own identity */
  pt_shm_counts held;         /* process: counts held for it (shm.h), given
                                 back when it has ended */
} pt_worker;

pt_worker *pt_worker_new(int kind);
void pt_worker_unref(pt_worker *w);
/* Push a new handle for w (the handle takes one reference). */
void pt_worker_push(lua_State *L, pt_worker *w);
/* The record of the worker handle at index i (raises if it is not one). */
pt_worker *pt_worker_of(lua_State *L, int i);

/* The record of the worker handle at index i for pt.select: 0 when it is
   not a worker handle; else 1, *w NULL when the handle was collected or
   belongs to another process. */
int pt_worker_get(lua_State *L, int i, pt_worker **w);

/* thread.c */
/* The eventfd the thread writes at its end (made on first call), or -1
   (errno).  After the call, look at w->done once more before sleeping. */
int pt_thread_done_fd(pt_worker *w);
int pt_thread_spawn(lua_State *L);                       /* pt.spawn_thread */
/* Wait for the thread's end up to timeout: 1 done, 0 timeout, -2 the
   caller was cancelled, -1 error (errno). */
int pt_thread_wait(pt_worker *w, double timeout);
void pt_thread_cancel(pt_worker *w);
void pt_thread_release(pt_worker *w);       /* handle collected */
/* Cancel every thread worker of this process and wait up to timeout for
   their end; returns how many still run. */
int pt_thread_stop_all(double timeout);
/* Around fork(): 0 before, 1 after in the parent, 2 after in the child. */
void pt_thread_fork(int stage);

/* process.c */
int pt_process_spawn(lua_State *L);                      /* pt.spawn_process */
int pt_process_wait(pt_worker *w, double timeout);
/* For pt.select: read what results came, reap if it ended.  1 ended, -1
   error (errno); 0 running: sleep until one of fds[0..*n) is readable,
   then call again (*n may be 0: no pidfd, and the results are in; then
   *slice is set and the caller looks again after a short while). */
int pt_process_watch(pt_worker *w, int fds[2], int *n, int *slice);
/* w:fd() of a process: an fd readable once its results are waiting or it
   has ended (an epoll over dups of the result pipe and the pidfd). */
int pt_process_fd(pt_worker *w);
int pt_process_signal(pt_worker *w, int sig);            /* 0 or errno */
void pt_process_release(pt_worker *w);      /* handle collected */

const char *pt_signal_name(int sig);          /* "SIGSEGV", or NULL */

#endif
