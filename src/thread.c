/* thread.c - spawn_thread: fn and its arguments are encoded here, and run
 * on a new pthread in a fresh Lua state; the results come back encoded. */
#include "worker.h"

#include <errno.h>
#include <time.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Cooperative cancellation inside pure Lua.  A count hook left on for
   the thread's whole life would cost every instruction on 5.3 and 5.4
   (the VM takes its slow path whenever a hook is set), so the hook is set
   only when cancellation is asked: w:cancel() sends the thread one
   real-time signal, and its handler, on the thread itself, sets a count
   hook on the thread's Lua state -- as lua.c does on SIGINT.  The hook
   raises "cancelled" at the next instruction, and again at every one
   after it, so a pcall that swallows the error cannot keep the loop
   going.  A coroutine running at that moment has hooks of its own: it is
   stopped once it yields or returns, or at its next procthread call. */
static int cancel_sig;
static pthread_once_t sig_once = PTHREAD_ONCE_INIT;

static void cancel_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  if (pt_cancel_requested()) pt_raise_cancelled(L);
}

static void on_cancel_signal(int sig) {
  pt_ctx *c = pt_self_ctx;
  int e = errno;
  (void)sig;
  if (c && c->L && c->cancel && *c->cancel)
    lua_sethook(c->L, cancel_hook, LUA_MASKCOUNT, 1);
  errno = e;
}

static void install_cancel_signal(void) {
  struct sigaction sa;
  int sig = SIGRTMIN + 6;
  if (sig > SIGRTMAX) return;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_cancel_signal;
  sa.sa_flags = SA_RESTART;
  sigfillset(&sa.sa_mask);
  if (sigaction(sig, &sa, NULL) == 0) cancel_sig = sig;
}

static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (pt_cancel_requested() && msg && strcmp(msg, PT_CANCELLED_MSG) == 0)
    return 1;
  pt_traceback(L, L, pt_tomessage(L, 1), 1);
  return 1;
}

static int set_error(pt_worker *w, const char *msg, size_t len) {
  w->result.len = 0;
  w->result_is_error = 1;
  return pt_buf_add(&w->result, msg, len);
}

static double tv(struct timeval t) { return (double)t.tv_sec + (double)t.tv_usec * 1e-6; }

/* Runs in the new state: stack holds the job's values, fn first. */
static int run_job(lua_State *L, pt_worker *w) {
  int n, base, nres, ok;
  char err[640];
  lua_pushcfunction(L, msgh);
  base = lua_gettop(L);
  n = pt_decode(L, w->job.data, w->job.len);
  pt_buf_free(&w->job);                       /* references adopted or dropped */
  if (n < 1) {
    const char *m = n < 0 ? lua_tostring(L, -1) : "no function";
    return set_error(w, m, strlen(m)), W_FAILED;
  }
  if (lua_pcall(L, n - 1, LUA_MULTRET, base) != 0) {
    size_t len;
    const char *m = lua_tolstring(L, -1, &len);
    if (w->cancel) return W_CANCELLED;
    if (!m) m = "(error object is not a string)", len = strlen(m);
    set_error(w, m, len);
    return W_FAILED;
  }
  nres = lua_gettop(L) - base;
  if (nres == 0) return W_SUCCEEDED;
  ok = pt_encode(L, base + 1, nres, "results", &w->result, err, sizeof err);
  if (!ok) {
    set_error(w, err, strlen(err));
    return W_FAILED;
  }
  return W_SUCCEEDED;
}

static void setpath(lua_State *L, const char *field, const char *value) {
  if (!value) return;
  lua_getglobal(L, "package");
  lua_pushstring(L, value);
  lua_setfield(L, -2, field);
  lua_pop(L, 1);
}

static void *thread_main(void *arg) {
  pt_worker *w = (pt_worker *)arg;
  lua_State *L;
  struct rusage ru;
  int status = W_FAILED, fd;
  uint64_t one = 1;
  __atomic_store_n(&w->id, (int)syscall(SYS_gettid), __ATOMIC_RELEASE);
  w->ctx.kind = PT_THREAD;
  w->ctx.cancel = &w->cancel;
  w->ctx.cancel_fd = w->cancel_fd;
  pt_self_ctx = &w->ctx;
  L = luaL_newstate();
  if (!L) {
    set_error(w, "cannot create a Lua state: not enough memory", 44);
  } else {
    luaL_openlibs(L);
    setpath(L, "path", w->path);
    setpath(L, "cpath", w->cpath);
    lua_getglobal(L, "package");              /* loaded on first use, no file search */
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_procthread_core);
    lua_setfield(L, -2, "procthread.core");
    lua_pop(L, 2);
    if (cancel_sig) {                         /* only ours: see above */
      sigset_t one;
      sigemptyset(&one);
      sigaddset(&one, cancel_sig);
      w->ctx.L = L;
      pthread_sigmask(SIG_UNBLOCK, &one, NULL);
      if (w->cancel) lua_sethook(L, cancel_hook, LUA_MASKCOUNT, 1);
    }
    status = run_job(L, w);
    if (cancel_sig) {
      sigset_t one;
      sigemptyset(&one);
      sigaddset(&one, cancel_sig);
      pthread_sigmask(SIG_BLOCK, &one, NULL);
      w->ctx.L = NULL;
    }
    lua_sethook(L, NULL, 0, 0);               /* finalizers run to the end */
    w->ctx.closing = 1;                       /* see pt_thread_release */
    lua_close(L);
  }
  if (getrusage(RUSAGE_THREAD, &ru) == 0) {
    w->cpu_user = tv(ru.ru_utime);
    w->cpu_sys = tv(ru.ru_stime);
    w->max_rss_kib = ru.ru_maxrss;
  }
  w->t_end = pt_now();
  w->status = status;
  pt_self_ctx = NULL;
  /* Publish the end.  A plain joiner waits for the thread's exit; one that
     must stay cancellable polls an eventfd it made (see pt_thread_wait). */
  __atomic_store_n(&w->done, 1, __ATOMIC_SEQ_CST);
  fd = __atomic_load_n(&w->done_fd, __ATOMIC_SEQ_CST);
  if (fd >= 0 && write(fd, &one, sizeof one) < 0) { /* the flag is what counts */ }
  pt_lifecycle_remove(w);
  pt_worker_unref(w);
  __atomic_sub_fetch(&pt_live_threads, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

static char *dup_field(lua_State *L, const char *field) {
  char *s = NULL;
  lua_getglobal(L, "package");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, field);
    if (lua_type(L, -1) == LUA_TSTRING) s = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return s;
}

int pt_thread_spawn(lua_State *L) {
  char err[640];
  pt_worker *w;
  sigset_t all, old;
  int e, n = lua_gettop(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  w = pt_worker_new(PT_THREAD);
  if (!w) return pt_push_oserror(L, "spawn_thread", ENOMEM);
  if (!pt_encode_call(L, 1, n, &w->job, err, sizeof err)) {
    pt_worker_unref(w);
    return luaL_error(L, "spawn_thread: %s", err);
  }
  w->path = dup_field(L, "path");
  w->cpath = dup_field(L, "cpath");
  w->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (w->cancel_fd < 0) goto oserr_eventfd;
  pthread_once(&sig_once, install_cancel_signal);
  w->refs = 2;                                  /* the handle and the thread */
  w->t_start = pt_now();
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);    /* the thread must not take our signals */
  __atomic_add_fetch(&pt_live_threads, 1, __ATOMIC_SEQ_CST);
  pt_lifecycle_add(L, w);                      /* before it can end */
  e = pthread_create(&w->thread, NULL, thread_main, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (e != 0) {
    pt_lifecycle_remove(w);
    __atomic_sub_fetch(&pt_live_threads, 1, __ATOMIC_SEQ_CST);
    w->refs = 1;
    pt_worker_unref(w);
    return pt_push_oserror(L, "pthread_create", e);
  }
  pt_worker_push(L, w);
  return 1;
oserr_eventfd:
  e = errno;
  pt_worker_unref(w);
  return pt_push_oserror(L, "eventfd", e);
}

static void joined(pt_worker *w) {
  w->joined = 1;
  pt_close(w->done_fd);            /* the thread is gone: nobody uses them now */
  pt_close(w->cancel_fd);
  w->done_fd = w->cancel_fd = -1;
}

int pt_thread_wait(pt_worker *w, double timeout) {
  int r;
  if (w->joined) return 1;
  if (__atomic_load_n(&w->done, __ATOMIC_SEQ_CST)) {
    pthread_join(w->thread, NULL);             /* it is leaving: a short wait */
    joined(w);
    return 1;
  }
  if (timeout == 0) return 0;
  if ((!pt_self_ctx || !pt_self_ctx->cancel) && !pt_interrupt_watched()) {
    /* Nobody can cancel this joiner: wait for the thread's exit itself,
       one wake-up, as pthread_join alone would. */
    if (timeout < 0) {
      r = pthread_join(w->thread, NULL);
    } else {
      struct timespec ts;
      double end;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      end = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 + timeout;
      ts.tv_sec = (time_t)end;
      ts.tv_nsec = (long)((end - (double)ts.tv_sec) * 1e9);
      r = pthread_clockjoin_np(w->thread, NULL, CLOCK_MONOTONIC, &ts);
      if (r == ETIMEDOUT) return 0;
    }
    if (r != 0) { errno = r; return -1; }
    joined(w);
    return 1;
  }
  /* A cancellable joiner (a thread worker): poll an eventfd the thread
     writes at its end, next to our own cancellation fd.  The seq_cst store
     of the fd and the thread's seq_cst store of w->done pair up: one of the
     two sides always sees the other. */
  if (w->done_fd < 0) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) return -1;
    __atomic_store_n(&w->done_fd, fd, __ATOMIC_SEQ_CST);
  }
  r = __atomic_load_n(&w->done, __ATOMIC_SEQ_CST) ? 1 : pt_wait_fd(w->done_fd, POLLIN, timeout);
  if (r <= 0) return r;
  if (!__atomic_load_n(&w->done, __ATOMIC_SEQ_CST)) return 0;
  pthread_join(w->thread, NULL);
  joined(w);
  return 1;
}

void pt_thread_cancel(pt_worker *w) {
  uint64_t one = 1;
  if (w->joined || __atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) return;
  __atomic_store_n(&w->cancel, 1, __ATOMIC_SEQ_CST);
  if (write(w->cancel_fd, &one, sizeof one) < 0) { /* flag is set anyway */ }
  if (cancel_sig && !__atomic_load_n(&w->done, __ATOMIC_SEQ_CST))
    pthread_kill(w->thread, cancel_sig);    /* not yet joined: the id is valid */
}

void pt_thread_release(pt_worker *w) {
  /* A thread worker that ends without joining a thread it started leaves
     no one who could ever join it: cancel it rather than let it run on. */
  if (!w->joined && pt_self_ctx && pt_self_ctx->kind == PT_THREAD && pt_self_ctx->closing)
    pt_thread_cancel(w);
  if (!w->joined) {
    if (__atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) pthread_join(w->thread, NULL);
    else if (pt_lifecycle_adopt(w)) { pt_worker_unref(w); return; }   /* see lifecycle.c */
    else pthread_detach(w->thread);
    w->joined = 1;
  }
  pt_worker_unref(w);
}
