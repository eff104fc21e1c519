/* thread.c - the thread kind of worker (pt_thread_ops): spawn_thread
 * encodes fn and its arguments, a new pthread runs them in a fresh Lua
 * state, the results come back encoded; join, cancel (the cancellation
 * signal and hook), fd and release of a thread worker. */
#include "worker.h"
#include "queue.h"
#include "wait.h"

#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
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
static int cancel_sig;                 /* atomic: the signal taken, 0: none */
static int wanted_sig = -1;            /* atomic: pt.configure's choice; -1: pick */
static int sig_decided;                /* atomic: the choice above is final */
static pthread_once_t sig_once = PTHREAD_ONCE_INIT;

/* A thread worker's record: the common part, then the thread's own. */
typedef struct thread_worker {
  pt_worker w;
  int done_fd;                /* eventfd made for w:fd() or pt.select (on
                                 the handle's thread), written at the end;
                                 or -1 */
  int cancel_fd;              /* eventfd written on cancel */
  pt_buf job;                 /* encoded fn and args */
  char *path, *cpath;         /* package.path / cpath to use */
  pthread_t thread;           /* the OS thread running it, while `on` */
  int on;                     /* idle_mu: it runs on that thread now */
  int end_waited;             /* atomic: a joiner waits for done 2 */
  pt_ctx ctx;                 /* its own identity */
  int note_state;             /* atomic: the end note, NOTE_* below */
  pt_off note_q;              /* its queue and generation, or 0 */
  uint64_t note_gen;
  char *note;                 /* the message (malloc'd) */
  size_t note_len;
  int note_given;             /* the spawner's: a note was attached */
} thread_worker;

static thread_worker *tw(pt_worker *w) { return (thread_worker *)w; }

static void cancel_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  if (pt_cancel_requested()) pt_raise_cancelled(L);
}

static void arm(lua_State *L) { lua_sethook(L, cancel_hook, LUA_MASKCOUNT, 1); }

void pt_cancel_arm(lua_State *L) {
  pt_ctx *c = pt_self_ctx;
  if (!c || c->kind != PT_THREAD || !c->L || !pt_cancel_requested()) return;
  arm(c->L);
  if (L != c->L) arm(L);
}

static void on_cancel_signal(int sig) {
  pt_ctx *c = pt_self_ctx;
  int e = errno;
  (void)sig;
  if (c && c->L && pt_cancel_requested()) arm(c->L);
  errno = e;
}

/* A signal procthread may take: nobody installed a handler for it. */
static int signal_free(int sig) {
  struct sigaction old;
  if (sigaction(sig, NULL, &old) != 0) return 0;
  return !(old.sa_flags & SA_SIGINFO) && (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN);
}

static int take_signal(int sig) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_cancel_signal;
  sa.sa_flags = SA_RESTART;
  sigfillset(&sa.sa_mask);
  return signal_free(sig) && sigaction(sig, &sa, NULL) == 0;
}

/* The first spawn_thread picks the signal: pt.configure's, or the first
   real-time signal from SIGRTMIN+6 up that has no handler.  A handler the
   host installed is never replaced; without a signal, cancellation still
   works at every blocking call (the flag and the eventfd). */
static void install_cancel_signal(void) {
  int sig, want = __atomic_load_n(&wanted_sig, __ATOMIC_ACQUIRE);
  __atomic_store_n(&sig_decided, 1, __ATOMIC_RELEASE);
  if (want >= 0) {
    if (want > 0 && take_signal(want)) __atomic_store_n(&cancel_sig, want, __ATOMIC_RELEASE);
    return;
  }
  for (sig = SIGRTMIN + 6; sig <= SIGRTMAX; sig++)
    if (take_signal(sig)) { __atomic_store_n(&cancel_sig, sig, __ATOMIC_RELEASE); return; }
}

const char *pt_set_cancel_signal(double n) {
  int sig = (n >= 0 && n <= SIGRTMAX) ? (int)n : -1;
  if (sig != n || (sig != 0 && sig < SIGRTMIN))
    return "cancel_signal must be a real-time signal number (SIGRTMIN to SIGRTMAX) or 0 for none";
  if (__atomic_load_n(&sig_decided, __ATOMIC_ACQUIRE))
    return sig == __atomic_load_n(&cancel_sig, __ATOMIC_ACQUIRE) ? NULL
           : "cancel_signal: threads have been started; configure it before first use";
  if (sig && !signal_free(sig)) return "cancel_signal: the program has a handler on that signal";
  __atomic_store_n(&wanted_sig, sig, __ATOMIC_RELEASE);
  return NULL;
}

/* ---- OS threads kept for reuse ------------------------------------------
   A thread that has run a worker stays, idle, for the next spawn (at most
   IDLE_MAX of them; one idle for IDLE_SECS leaves).  While idle it makes
   the Lua state the next worker starts in: fresh, never run (a worker
   never sees another's globals), so a spawn does not wait for it.  Idle
   threads hold no worker, fd or shared object; pt._spare_threads() counts
   them, so leak checks leave them out.  A forked child has none.
   A spawn that finds no idle thread with its state made starts a second
   OS thread rather than wait for the one still making it (at most
   EAGER_MAX live, as each costs every fork of the process a little: its
   stack and malloc arena are copied too): spawn after spawn, one thread
   then makes its state while the other runs a worker, on another CPU. */
#define IDLE_MAX 4
#define IDLE_SECS 5.0
#define EAGER_MAX 2

typedef struct osthread {
  thread_worker *job;         /* the worker to run (set before go) */
  uint32_t go;                /* futex word: a job was handed over */
  lua_State *ready;           /* a fresh state for the next job, or NULL */
  int prepared;               /* atomic: ready is made (or could not be) */
  struct osthread *next;      /* the idle list (idle_mu) */
  int tid;                    /* its kernel thread id */
  struct rusage r0;           /* its times once ready for the next job */
  int have0;                  /* r0 was read */
} osthread;

static pthread_mutex_t idle_mu = PTHREAD_MUTEX_INITIALIZER;
static osthread *idle;
static int idle_n, spare;     /* idle_mu: on the list; alive and not running a worker */
static int live;              /* idle_mu: OS threads alive (started, not yet left) */

/* Around every fork() (pthread_atfork: procthread's and any other
   library's): the list is never caught half-changed, and a new child,
   which none of the threads came along into, starts with none. */
static void lock_idle(void) { pthread_mutex_lock(&idle_mu); }
static void unlock_idle(void) { pthread_mutex_unlock(&idle_mu); }
PT_AFTER_FORK static void forget_idle(void) {
  idle = NULL;
  idle_n = spare = live = 0;
  pt_mutex_reset(&idle_mu);    /* held across the fork by this thread: its unlock, without libc */
}
static void watch_forks(void) { pthread_atfork(lock_idle, unlock_idle, forget_idle); }
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static int thread_spare(void) {
  int n;
  pthread_mutex_lock(&idle_mu);
  n = spare;
  pthread_mutex_unlock(&idle_mu);
  return n;
}

static void signal_thread(thread_worker *t) {
  uint64_t one = 1;
  int sig = __atomic_load_n(&cancel_sig, __ATOMIC_ACQUIRE);
  __atomic_store_n(&t->w.cancel, 1, __ATOMIC_SEQ_CST);
  if (write(t->cancel_fd, &one, sizeof one) < 0) { /* the flag is set anyway */ }
  if (!sig) return;
  /* not running yet: it looks at the flag before any Lua; no longer: the
     OS thread may run another worker, or be gone */
  pthread_mutex_lock(&idle_mu);
  if (t->on) pthread_kill(t->thread, sig);
  pthread_mutex_unlock(&idle_mu);
}

static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (pt_cancel_requested() && msg && strcmp(msg, PT_CANCELLED_MSG) == 0)
    return 1;
  pt_traceback(L, L, pt_tomessage(L, 1), 1);
  return 1;
}

static int set_error(pt_worker *w, const char *msg, size_t len) {  /* 0 or ENOMEM */
  w->result.len = 0;
  w->result_is_error = 1;
  return pt_buf_add(&w->result, msg, len);
}

/* ---- the end note (pools) -----------------------------------------------
   A pool's thread worker reports its own end on the pool's answer channel
   (pool.lua's worker_main); one that ends before its function runs (no
   memory for its state, its job not decoded, cancelled before it began)
   cannot, and would leave its pool waiting for good.  The pool gives it a
   note instead, once spawned (ch:_end_note): a message to send in that
   case.  Whichever side comes second acts on it: the spawner attaching
   the note (NOTE_SET), or the worker as its function starts (NOTE_RAN:
   the note is dropped) or as it ends without running it (NOTE_UNSTARTED:
   the note is sent). */
enum { NOTE_NONE = 0, NOTE_SET, NOTE_RAN, NOTE_UNSTARTED };

/* A note given up: its queue's count goes, and unless the message went
   on the queue (sent), the references it holds (a shared table, a
   channel...) too. */
static void drop_note(pt_off q, uint64_t gen, char *msg, size_t len, int sent) {
  if (q) pt_queue_decref(q, gen, pt_discard);
  if (msg && !sent) pt_discard(msg, len);
  free(msg);
}

static void note_drop(thread_worker *t, int sent) {
  drop_note(t->note_q, t->note_gen, t->note, t->note_len, sent);
  t->note_q = 0;
  t->note = NULL;
}

/* The queue has room for it (a pool's answer channel has room for every
   end); it waits for room otherwise, until the worker is cancelled. */
static void note_send(thread_worker *t, double deadline) {
  pt_wake wk = {&t->w.cancel, NULL, 0};
  pt_qmsg m;
  int r;
  pt_qmsg_init(&m, t->note, t->note_len);
  while ((r = pt_queue_put(t->note_q, &m, deadline, &wk)) == PT_INTR) {}
  if (r != PT_OK) pt_qmsg_done(&m);
  note_drop(t, r == PT_OK);
}

/* The worker's side: to NOTE_RAN or NOTE_UNSTARTED; a note set is its now. */
static void note_mark(thread_worker *t, int state) {
  int old = NOTE_NONE;
  if (__atomic_compare_exchange_n(&t->note_state, &old, state, 0, __ATOMIC_ACQ_REL,
                                  __ATOMIC_ACQUIRE) || old != NOTE_SET)
    return;
  __atomic_store_n(&t->note_state, state, __ATOMIC_RELAXED);
  if (state == NOTE_UNSTARTED) note_send(t, PT_FOREVER);
  else note_drop(t, 0);
}

void pt_thread_end_note(pt_worker *w, uint64_t q, uint64_t gen, char *msg, size_t len) {
  thread_worker *t = tw(w);
  int old = NOTE_NONE;
  if (t->note_given) {                          /* one note a worker */
    drop_note(q, gen, msg, len, 0);
    return;
  }
  t->note_given = 1;
  t->note_q = q;
  t->note_gen = gen;
  t->note = msg;
  t->note_len = len;
  if (__atomic_compare_exchange_n(&t->note_state, &old, NOTE_SET, 0, __ATOMIC_ACQ_REL,
                                  __ATOMIC_ACQUIRE))
    return;
  if (old == NOTE_UNSTARTED) note_send(t, 0);   /* it ended already */
  else note_drop(t, 0);
}

/* pt.fault("nomem_start", n): the next n thread workers of this process
   start as if malloc had failed.  The count is this process's: the child
   of any fork, a bare one too, starts with none (it reads first, so that
   a child writes no page when none is set). */
static int pt_fault_starts;                    /* atomic */
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;
PT_AFTER_FORK static void forget_faults(void) {
  if (__atomic_load_n(&pt_fault_starts, __ATOMIC_RELAXED)) pt_fault_starts = 0;
}
static void watch_faults(void) { pthread_atfork(NULL, NULL, forget_faults); }
void pt_fault_set_starts(int n) {
  pthread_once(&fault_once, watch_faults);
  __atomic_store_n(&pt_fault_starts, n, __ATOMIC_RELEASE);
}

/* One of the starts asked for, if any. */
static int fault_start(void) {
  int n = __atomic_load_n(&pt_fault_starts, __ATOMIC_ACQUIRE);
  while (n > 0)
    if (__atomic_compare_exchange_n(&pt_fault_starts, &n, n - 1, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
      return 1;
  return 0;
}

static double tv(struct timeval t) { return (double)t.tv_sec + (double)t.tv_usec * 1e-6; }

/* An OS thread of workers blocks every signal but the cancellation
   signal, for its whole life (it began with all blocked): the handler
   does nothing unless the worker it runs has L set and was asked to stop.
   After fn the mask is set again, so the next worker starts the same,
   whatever fn's C code did to it. */
static void worker_mask(void) {
  sigset_t m;
  int sig = __atomic_load_n(&cancel_sig, __ATOMIC_ACQUIRE);
  sigfillset(&m);
  if (sig) sigdelset(&m, sig);
  pthread_sigmask(SIG_SETMASK, &m, NULL);
}

/* While fn runs the cancellation signal may reach this thread; its
   handler then arms the hook on L.  Asked already: arm it now. */
static void take_cancels(lua_State *L, thread_worker *w, int how) {
  if (how == SIG_BLOCK) worker_mask();
  w->ctx.L = how == SIG_UNBLOCK ? L : NULL;
  if (how == SIG_UNBLOCK && pt_cancel_requested()) arm(L);
}

/* Runs in the new state: stack holds the job's values, fn first. */
static int run_job(lua_State *L, thread_worker *t) {
  pt_worker *w = &t->w;
  int n, base, nres, ok, r;
  char err[PT_ERRLEN];
  if (pt_cancel_requested()) {                /* cancelled before it began */
    pt_discard(t->job.data, t->job.len);
    pt_buf_free(&t->job);
    return W_CANCELLED;
  }
  lua_pushcfunction(L, msgh);
  base = lua_gettop(L);
  n = pt_decode(L, t->job.data, t->job.len);
  pt_buf_free(&t->job);                       /* references adopted or dropped */
  if (n < 1) {
    const char *m = n < 0 ? lua_tostring(L, -1) : "no function";
    return set_error(w, m, strlen(m)), W_FAILED;
  }
  note_mark(t, NOTE_RAN);
  take_cancels(L, t, SIG_UNBLOCK);
  r = lua_pcall(L, n - 1, LUA_MULTRET, base);
  take_cancels(L, t, SIG_BLOCK);
  if (r != 0) {
    size_t len;
    const char *m = lua_tolstring(L, -1, &len);
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

/* package[field] = value, unless it holds that already (the fresh state
   read the same environment as the spawner's did): a long string made
   and interned less on the worker's path (LuaJIT hashes all of it). */
static void setpath(lua_State *L, const char *field, const char *value) {
  const char *now;
  if (!value) return;
  lua_getglobal(L, "package");                    /* L: package */
  lua_getfield(L, -1, field);                     /* L: package now */
  now = lua_tostring(L, -1);
  if (!now || strcmp(now, value) != 0) {
    lua_pushstring(L, value);
    lua_setfield(L, -3, field);
  }
  lua_pop(L, 2);
}

/* The worker's life in its new state, run protected (start_protected):
   a memory error while the state is set up or the job decoded fails the
   worker instead of aborting the process. */
typedef struct start_arg {
  thread_worker *w;           /* NULL: only give the state its libraries */
  int fresh;                  /* it has them already (made while idle) */
  int status;                 /* W_*: run_job's outcome */
  int ready;                  /* the state was set up */
} start_arg;

/* The globals and package.loaded a fresh state's libraries fill, made at
   their final size (the interpreter's: 35 to 38 globals, 9 to 11
   modules), so that they are not grown five times over on the way (a
   spawn+join: 21k instructions fewer on 5.4, 17k on 5.1; LuaJIT's grow
   at little cost, and made ahead they cost 1k more).  On 5.1 the running
   function's environment is the new globals too: the functions the
   libraries make take theirs from it. */
#ifndef PT_LUAJIT
static void sized_tables(lua_State *L) {
  lua_createtable(L, 0, 48);
#if LUA_VERSION_NUM >= 502
  lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
#else
  lua_pushvalue(L, -1);
  lua_replace(L, LUA_GLOBALSINDEX);
  lua_replace(L, LUA_ENVIRONINDEX);
#endif
  lua_createtable(L, 0, 16);
  lua_setfield(L, LUA_REGISTRYINDEX, "_LOADED");
}
#endif

/* The standard libraries, and procthread.core in package.preload (loaded
   on first use, with no file search).  The collector stays off meanwhile:
   all they make lives as long as the state, so the steps it took found
   nothing to free (a spawn+join: 11k instructions fewer on 5.4, 40k on
   5.1, 10k on 5.2 and 5.3; none on LuaJIT, callgrind).  On 5.4 it then
   makes one full cycle, which leaves it at rest until the memory in use
   doubles: restarted only, its next cycle began at the worker's first
   allocation (16k instructions on the spawn's critical path; the cycle
   here costs as much, off it).  Elsewhere that cycle costs 4 to 15 times
   what it saves the worker. */
static void open_libraries(lua_State *L) {
  lua_gc(L, LUA_GCSTOP, 0);
#ifndef PT_LUAJIT
  sized_tables(L);
#endif
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_procthread_core);
  lua_setfield(L, -2, "procthread.core");
  lua_pop(L, 2);
  lua_gc(L, LUA_GCRESTART, 0);
#if LUA_VERSION_NUM >= 504
  lua_gc(L, LUA_GCCOLLECT, 0);
#endif
}

static int start(lua_State *L) {
  start_arg *a = (start_arg *)lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (!a->fresh) open_libraries(L);
  if (!a->w) return 0;
  setpath(L, "path", a->w->path);
  setpath(L, "cpath", a->w->cpath);
  a->ready = 1;
  a->status = run_job(L, a->w);
  return 0;
}

static int start_protected(lua_State *L, start_arg *a) {
#if LUA_VERSION_NUM >= 502
  lua_pushcfunction(L, start);              /* a light C function: no allocation */
  lua_pushlightuserdata(L, a);
  return lua_pcall(L, 1, 0, 0);
#else
  return lua_cpcall(L, start, a);
#endif
}

/* The state could not be made or set up: the worker fails with why. */
static int failed_start(pt_worker *w, const char *why) {
  char msg[200];
  int n = snprintf(msg, sizeof msg, "cannot create a Lua state: %s", why ? why : "not enough memory");
  set_error(w, msg, n < (int)sizeof msg ? (size_t)n : sizeof msg - 1);
  return W_FAILED;
}

/* ---- a worker state's first memory ----------------------------------------
   The standard libraries are some 300 small blocks that live as long as
   the state.  A new state takes them from one block of its own, cut in
   order (a bump allocator), and every later block from malloc: the frees
   of lua_close cost nothing for them.  A block of the first memory that
   Lua frees or grows is left unused there.  The state is made with this
   allocator from its first block (lua_newstate), so the global state,
   the string table and the names the core interns come from the block
   too; it then gets a panic function and (5.4) warning functions of its
   own, as luaL_newstate would give it.  LuaJIT takes another allocator
   only in its GC64 mode: elsewhere its state is luaL_newstate's (see
   jit_gc64). */
#define FIRST_MEM (64 * 1024)

typedef struct first_mem {
  size_t top;                 /* bytes of data[] handed out */
  max_align_t data[FIRST_MEM / sizeof(max_align_t)];
} first_mem;

static int in_first(const first_mem *m, const void *p) {
  const char *c = (const char *)p, *base = (const char *)m->data;
  return c >= base && c < base + sizeof m->data;
}

static void *first_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  first_mem *m = (first_mem *)ud;
  size_t need = nsize < sizeof m->data                  /* rounded up, no overflow */
                ? (nsize + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1)
                : sizeof m->data + 1;
  void *q;
  if (p && !in_first(m, p)) {
    if (nsize) return realloc(p, nsize);
    free(p);
    return NULL;
  }
  if (nsize == 0) return NULL;                 /* a first-memory block: left */
  if (p && nsize <= osize) return p;
  if (need <= sizeof m->data - m->top) {
    q = (char *)m->data + m->top;
    m->top += need;
  } else if ((q = malloc(nsize)) == NULL) {
    return NULL;                               /* p stays as it was */
  }
  if (p) memcpy(q, p, osize);
  return q;
}

/* An error outside any protected call (none is expected: every call that
   can raise runs under start_protected): say so, then Lua aborts. */
static int state_panic(lua_State *L) {
  const char *m = lua_tostring(L, -1);
  fprintf(stderr, "procthread: unprotected error in a thread worker's Lua state: %s\n",
          m ? m : "(not a string)");
  fflush(stderr);
  return 0;
}

#if LUA_VERSION_NUM >= 504
/* warn() as the stand-alone interpreter has it: off at first; "@on" and
   "@off" (a message of one piece) switch it; a message shown is
   "Lua warning: " then its pieces, then a newline. */
static void warn_off(void *ud, const char *msg, int tocont);
static void warn_on(void *ud, const char *msg, int tocont);

static int warn_control(lua_State *L, const char *msg, int tocont) {
  if (tocont || msg[0] != '@') return 0;
  if (strcmp(msg + 1, "on") == 0) lua_setwarnf(L, warn_on, L);
  else if (strcmp(msg + 1, "off") == 0) lua_setwarnf(L, warn_off, L);
  return 1;                                    /* any other '@' message: ignored */
}

static void warn_off(void *ud, const char *msg, int tocont) {
  warn_control((lua_State *)ud, msg, tocont);
}

static void warn_piece(void *ud, const char *msg, int tocont) {
  fputs(msg, stderr);
  if (!tocont) fputc('\n', stderr);
  fflush(stderr);
  lua_setwarnf((lua_State *)ud, tocont ? warn_piece : warn_on, ud);
}

static void warn_on(void *ud, const char *msg, int tocont) {
  if (warn_control((lua_State *)ud, msg, tocont)) return;
  fputs("Lua warning: ", stderr);
  warn_piece(ud, msg, tocont);
}
#endif

#ifdef PT_LUAJIT
/* 1: this LuaJIT is a GC64 build, where lua_newstate takes any allocator
   (elsewhere it refuses, and says so on stderr).  Its ffi library tells
   (ffi.abi "gc64"; false on a LuaJIT that does not know the word), asked
   once in a state of its own, on the first OS thread of workers. */
static int jit_gc64;
static pthread_once_t gc64_once = PTHREAD_ONCE_INIT;

static void probe_gc64(void) {
  lua_State *L = luaL_newstate();
  if (!L) return;
  luaL_openlibs(L);
  if (luaL_dostring(L, "local ok, ffi = pcall(require, 'ffi') return ok and ffi.abi('gc64')") == 0)
    jit_gc64 = lua_toboolean(L, -1);
  lua_close(L);
}
#endif

static lua_State *new_state(void) {
  first_mem *m;
  lua_State *L;
#ifdef PT_LUAJIT
  pthread_once(&gc64_once, probe_gc64);
  if (!jit_gc64) return luaL_newstate();
#endif
  if ((m = (first_mem *)malloc(sizeof *m)) == NULL) return NULL;
  m->top = 0;
  if ((L = lua_newstate(first_alloc, m)) == NULL) {
    free(m);
    return NULL;
  }
  lua_atpanic(L, state_panic);
#if LUA_VERSION_NUM >= 504
  lua_setwarnf(L, warn_off, L);
#endif
  return L;
}

/* Lua 5.1's io library makes stdin/stdout/stderr with the closing __gc
   and gives each its "never close" environment afterwards: a memory error
   in between leaves one that lua_close would fclose -- the process's own
   stdout or stdin.  Before a state whose set-up failed (it ran no user
   code) is closed, its file metatable loses __gc.  By walking (lua_next)
   and assigning to a key that is there (rawset), nothing is allocated, so
   nothing can raise where no error is caught. */
#if LUA_VERSION_NUM == 501 && !defined(PT_LUAJIT) && !defined(LUAJIT_VERSION)
static int is_key(lua_State *L, const char *name) {
  return lua_type(L, -2) == LUA_TSTRING && strcmp(lua_tostring(L, -2), name) == 0;
}

static void disarm_std_files(lua_State *L) {
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX)) {          /* L: key value */
    if (is_key(L, "FILE*") && lua_istable(L, -1)) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {                     /* L: key mt k v */
        if (is_key(L, "__gc")) {
          lua_pop(L, 1);
          lua_pushvalue(L, -1);
          lua_pushnil(L);
          lua_rawset(L, -4);                        /* mt.__gc = nil */
          lua_pop(L, 1);
          break;
        }
        lua_pop(L, 1);
      }
      lua_pop(L, 2);
      return;
    }
    lua_pop(L, 1);
  }
}
#else
static void disarm_std_files(lua_State *L) { (void)L; }
#endif

static void close_state(lua_State *L) {
  void *ud = NULL;
  lua_Alloc f = lua_getallocf(L, &ud);
  lua_close(L);
  if (f == first_alloc) free(ud);
}

/* A state with its libraries, for the next worker; NULL: no memory. */
static lua_State *ready_state(void) {
  start_arg a = {NULL, 0, W_FAILED, 0};
  lua_State *L = new_state();
  if (L && start_protected(L, &a) != 0) {
    lua_settop(L, 0);
    disarm_std_files(L);
    close_state(L);
    L = NULL;
  }
  return L;
}

/* Run the worker in L (made while idle) or in a new state. */
static int run_state(thread_worker *t, lua_State *L) {
  pt_worker *w = &t->w;
  start_arg a;
  a.fresh = L != NULL;
  if (fault_start()) {                      /* as if malloc had failed */
    if (L) close_state(L);
    return failed_start(w, NULL);
  }
  if (!L) L = new_state();
  if (!L) return failed_start(w, NULL);
  a.w = t;
  a.status = W_FAILED;
  a.ready = 0;
  if (start_protected(L, &a) != 0) {
    size_t len;
    const char *m = lua_tolstring(L, -1, &len);
    if (!a.ready) failed_start(w, m);
    else if (m) set_error(w, m, len);
    else set_error(w, "(error object is not a string)", 30);
    a.status = W_FAILED;
    if (!a.ready) {
      lua_settop(L, 0);
      disarm_std_files(L);
    }
  }
  lua_sethook(L, NULL, 0, 0);               /* finalizers run to the end */
  t->ctx.closing = 1;                       /* see thread_release */
  close_state(L);
  return a.status;
}

/* The last thing a thread worker does, and what a failed start undoes:
   the count a leaving worker process waits on (pt_lifecycle_stop_threads). */
static void left(void) {
  __atomic_sub_fetch(&pt_live_threads, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&pt_live_waiters, __ATOMIC_SEQ_CST))
    pt_futex_wake((const uint32_t *)&pt_live_threads, -1);
}

static void set_on(thread_worker *t, int on) {
  pthread_mutex_lock(&idle_mu);
  t->thread = pthread_self();
  t->on = on;
  pthread_mutex_unlock(&idle_mu);
}

/* One worker on the OS thread o; cpu times are the thread's since o->r0,
   read once the thread was ready for a job (not on the spawn's path: a
   thread waiting for one uses no cpu). */
static void run_worker(thread_worker *t, lua_State *L, const osthread *o) {
  pt_worker *w = &t->w;
  struct rusage ru;
  int status, fd;
  uint64_t one = 1;
  __atomic_store_n(&w->id, o->tid, __ATOMIC_SEQ_CST);
  set_on(t, 1);
  t->ctx.kind = PT_THREAD;
  t->ctx.cancel = &w->cancel;
  t->ctx.cancel_fd = t->cancel_fd;
  pt_self_ctx = &t->ctx;
  status = run_state(t, L);
  note_mark(t, NOTE_UNSTARTED);             /* unless its function ran */
  if (o->have0 && getrusage(RUSAGE_THREAD, &ru) == 0) {
    w->cpu_user = tv(ru.ru_utime) - tv(o->r0.ru_utime);
    w->cpu_sys = tv(ru.ru_stime) - tv(o->r0.ru_stime);
    w->max_rss_kib = ru.ru_maxrss;
  }
  w->t_end = pt_clock_now();
  /* Cancelled before it ended: cancelled, whatever fn did with it (a
     pcall may have swallowed the error; the results are discarded). */
  w->status = __atomic_load_n(&w->cancel, __ATOMIC_SEQ_CST) ? W_CANCELLED : status;
  pt_self_ctx = NULL;
  set_on(t, 0);
  /* Publish the end.  It leaves the registry first: no cancel at exit
     reaches it from then on (they come under the registry's lock), so
     the cancel eventfd is the handle's alone.  Then w->done 1: the
     outcome is final (joiners and pt.select sleep on the word; w:fd() is
     an eventfd written here); then 2, this thread is done with the done
     eventfd (a joiner closes it). */
  pt_lifecycle_remove(w);
  __atomic_store_n(&w->done, 1, __ATOMIC_SEQ_CST);
  pt_futex_wake((const uint32_t *)&w->done, -1);
  fd = __atomic_load_n(&t->done_fd, __ATOMIC_SEQ_CST);
  if (fd >= 0 && write(fd, &one, sizeof one) < 0) { /* the flag is what counts */ }
  __atomic_store_n(&w->done, 2, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&t->end_waited, __ATOMIC_SEQ_CST))   /* see joined */
    pt_futex_wake((const uint32_t *)&w->done, -1);
  pt_worker_unref(w);
  left();
}

/* Take o off the idle list if it is still there (idle_mu held). */
static int unlist(osthread *o) {
  osthread **p;
  for (p = &idle; *p; p = &(*p)->next)
    if (*p == o) { *p = o->next; idle_n--; return 1; }
  return 0;
}

/* Stay for the next job: 1 with o->job set, 0 leave (the list is full,
   or nobody came for IDLE_SECS). */
static int next_job(osthread *o) {
  double deadline = pt_deadline(IDLE_SECS);
  __atomic_store_n(&o->go, 0, __ATOMIC_SEQ_CST);
  __atomic_store_n(&o->prepared, o->ready != NULL, __ATOMIC_RELEASE);
  pthread_mutex_lock(&idle_mu);
  if (idle_n >= IDLE_MAX) { spare--; pthread_mutex_unlock(&idle_mu); return 0; }
  o->next = idle;
  idle = o;
  idle_n++;
  pthread_mutex_unlock(&idle_mu);
  if (!o->ready) o->ready = ready_state();     /* off the next spawn's path */
  o->have0 = getrusage(RUSAGE_THREAD, &o->r0) == 0;
  __atomic_store_n(&o->prepared, 1, __ATOMIC_RELEASE);
  for (;;) {
    int r = pt_futex_wait(&o->go, 0, deadline, NULL);
    if (__atomic_load_n(&o->go, __ATOMIC_ACQUIRE)) return 1;
    if (r == PT_TIMEOUT) {
      int gone;
      pthread_mutex_lock(&idle_mu);
      gone = unlist(o);                        /* else a spawn took it: go comes */
      if (gone) spare--;
      pthread_mutex_unlock(&idle_mu);
      if (gone) return 0;
      deadline = PT_FOREVER;
    }
  }
}

static void thread_gone(void) {
  pthread_mutex_lock(&idle_mu);
  live--;
  pthread_mutex_unlock(&idle_mu);
}

static void *os_main(void *arg) {
  osthread *o = (osthread *)arg;
  o->tid = (int)syscall(SYS_gettid);
  /* This module's thread-local block is allocated (malloc) at its first
     use in a thread: use it while every signal is still blocked, so the
     cancellation signal's handler, which reads pt_self_ctx, never does
     that allocation inside a malloc it interrupted (seen: a thread
     cancelled as it began deadlocked on malloc's lock, and at_exit "stop"
     waited out exit_grace). */
  pt_self_ctx = NULL;
  worker_mask();
  o->have0 = getrusage(RUSAGE_THREAD, &o->r0) == 0;
  do {
    lua_State *L = o->ready;
    o->ready = NULL;
    run_worker(o->job, L, o);
    pthread_mutex_lock(&idle_mu);
    spare++;
    pthread_mutex_unlock(&idle_mu);
  } while (next_job(o));
  if (o->ready) close_state(o->ready);
  free(o);
  thread_gone();
  return NULL;
}

/* The idle thread to hand a job to (idle_mu held): one whose state is
   made (it starts at once); else, when EAGER_MAX threads live already,
   the one idle longest (the furthest in making its state); else NULL:
   start another. */
static osthread *pick_idle(void) {
  osthread *o, *last = NULL;
  for (o = idle; o; o = o->next) {
    if (__atomic_load_n(&o->prepared, __ATOMIC_ACQUIRE)) return o;
    last = o;
  }
  return live >= EAGER_MAX ? last : NULL;
}

/* Hand t to an idle OS thread, or start one: 0, or an errno. */
static int start_on_thread(thread_worker *t) {
  pthread_attr_t a;
  pthread_t th;
  sigset_t all, old;
  osthread *o;
  int e;
  pthread_mutex_lock(&idle_mu);
  if ((o = pick_idle()) != NULL) {
    unlist(o);
    spare--;
    o->job = t;
  } else {
    live++;                     /* the thread started below */
  }
  pthread_mutex_unlock(&idle_mu);
  if (o) {
    __atomic_store_n(&o->go, 1, __ATOMIC_RELEASE);
    pt_futex_wake(&o->go, 1);
    return 0;
  }
  o = (osthread *)calloc(1, sizeof *o);
  if (!o) {
    thread_gone();
    return ENOMEM;
  }
  o->job = t;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);    /* the thread must not take our signals */
  e = pthread_create(&th, &a, os_main, o);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&a);
  if (e) {
    free(o);
    thread_gone();
  }
  return e;
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

static int thread_spawn(lua_State *L) {
  char err[PT_ERRLEN];
  thread_worker *t;
  pt_worker *w;
  int e, n = lua_gettop(L);
  pt_spawn_check(L, &pt_thread_ops, 24);        /* the codec's walk of fn */
  t = (thread_worker *)pt_worker_new(&pt_thread_ops, PT_THREAD, sizeof *t);
  if (!t) return pt_push_oserror(L, pt_spawn_name(L, &pt_thread_ops), ENOMEM);
  w = &t->w;
  w->self = &t->ctx;
  t->done_fd = t->cancel_fd = -1;
  pt_buf_init(&t->job);
  if (!pt_encode_call(L, 1, n, &t->job, err, sizeof err)) {
    pt_worker_unref(w);
    return luaL_error(L, "%s: %s", pt_spawn_name(L, &pt_thread_ops), err);
  }
  t->path = dup_field(L, "path");
  t->cpath = dup_field(L, "cpath");
  t->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (t->cancel_fd < 0) goto oserr_eventfd;
  pthread_once(&sig_once, install_cancel_signal);
  pthread_once(&fork_once, watch_forks);
  w->refs = 2;                                  /* the handle and the thread */
  w->t_start = pt_clock_now();
  __atomic_add_fetch(&pt_live_threads, 1, __ATOMIC_SEQ_CST);
  pt_lifecycle_add(L, w);                      /* before it can end */
  e = start_on_thread(t);
  if (e != 0) {
    pt_lifecycle_remove(w);
    left();
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

/* Once done is 1 the thread no longer uses the cancel eventfd (see
   run_worker), and the done eventfd only if there is one: then a short
   wait for done 2.  Only this thread (the handle's) makes that eventfd,
   so one it has not made by now the thread never writes.  The thread
   wakes the word at 2 only when a joiner said it waits (end_waited, set
   before it looks at done; both seq_cst: the thread sees the flag, or
   the joiner sees 2). */
static void joined(thread_worker *t) {
  uint32_t d;
  if (t->done_fd >= 0) {
    __atomic_store_n(&t->end_waited, 1, __ATOMIC_SEQ_CST);
    while ((d = __atomic_load_n((uint32_t *)&t->w.done, __ATOMIC_SEQ_CST)) == 1)
      pt_futex_wait((const uint32_t *)&t->w.done, d, PT_FOREVER, NULL);
    pt_close(t->done_fd);
    __atomic_store_n(&t->done_fd, -1, __ATOMIC_SEQ_CST);
  }
  t->w.joined = 1;
  pt_close(t->cancel_fd);          /* nobody else uses it now */
  t->cancel_fd = -1;
}

/* A joiner sleeps on w->done, the futex word run_worker sets and wakes
   at the worker's end, beside its own cancel flag and (Ctrl-C watched) the SIGINT
   count, which the handler bumps and wakes: no fd is needed, so a full fd
   table cannot fail a join, and no timer either (a SIGINT just before the
   sleep changes the count, so the kernel does not sleep).  1 done, 0
   timeout, -2 cancelled or interrupted, -1 error (errno). */
static int wait_done(pt_worker *w, double timeout) {
  const volatile int *cancel = pt_self_ctx ? pt_self_ctx->cancel : NULL;
  double deadline = pt_deadline(timeout);
  for (;;) {
    const uint32_t *words[2];
    uint32_t vals[2];
    int n = 1, r;
    if (__atomic_load_n(&w->done, __ATOMIC_SEQ_CST)) return 1;
    if (pt_cancel_requested() || pt_interrupted()) return -2;
    words[0] = (const uint32_t *)&w->done;
    vals[0] = 0;
    if ((words[1] = pt_interrupt_word(&vals[1])) != NULL) n = 2;
    r = pt_futex_waitv(words, vals, n, deadline, cancel, NULL);
    if (r == PT_CANCELLED) return -2;
    if (r == PT_ERR) return -1;
    if (r == PT_TIMEOUT) return __atomic_load_n(&w->done, __ATOMIC_SEQ_CST);
  }
}

static int thread_wait(pt_worker *w, double timeout) {
  int r;
  if (w->joined) return 1;
  if (!__atomic_load_n(&w->done, __ATOMIC_SEQ_CST)) {
    if (timeout == 0) return 0;
    if ((r = wait_done(w, timeout)) <= 0) return r;
  }
  joined(tw(w));
  return 1;
}

/* The seq_cst store of the fd and the thread's seq_cst store of w->done
   pair up: one of the two sides always sees the other. */
int pt_thread_done_fd(pt_worker *w) {
  thread_worker *t = tw(w);
  if (t->done_fd < 0) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) return -1;
    __atomic_store_n(&t->done_fd, fd, __ATOMIC_SEQ_CST);
  }
  return t->done_fd;
}

/* w:fd(): a dup of the end eventfd, which the handle owns. */
static int thread_fd(pt_worker *w) {
  uint64_t one = 1;
  int fd = pt_thread_done_fd(w);
  if (fd < 0) return -1;
  fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  /* it ended before the thread could see the eventfd: say so ourselves */
  if (fd >= 0 && __atomic_load_n(&w->done, __ATOMIC_SEQ_CST) &&
      write(fd, &one, sizeof one) < 0) { /* readable already */ }
  return fd;
}

static int thread_cancel(pt_worker *w) {
  if (w->joined || __atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) return 0;
  signal_thread(tw(w));                     /* not yet joined: the id is valid */
  return 0;
}

static void thread_release(pt_worker *w) {
  /* A thread worker that ends without joining a thread it started leaves
     no one who could ever join it: cancel it rather than let it run on.
     Not a pool's (pt._daemon): the pool dropped with its owner tells its
     workers and watchers to leave (its finalizer runs first), and a
     process pool's watcher must stay until the last process worker has
     gone (it keeps the channels they use); at exit they are stopped. */
  if (!w->joined && !w->daemon && pt_self_ctx && pt_self_ctx->kind == PT_THREAD &&
      pt_self_ctx->closing)
    thread_cancel(w);
  /* still running: the registry keeps it cancellable at exit (so it is
     not marked joined: a cancel must still reach it) */
  if (!w->joined && !__atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) pt_lifecycle_adopt(w);
  pt_worker_unref(w);
}

static void thread_destroy(pt_worker *w) {
  thread_worker *t = tw(w);
  pt_close(t->done_fd);
  pt_close(t->cancel_fd);
  pt_discard(t->job.data, t->job.len);
  pt_buf_free(&t->job);
  free(t->path);
  free(t->cpath);
  note_drop(t, 0);
  pt_worker_free(w);
}

const pt_worker_ops pt_thread_ops = {
  "thread", thread_spawn, thread_wait, thread_cancel, NULL,
  "a thread cannot be sent a signal (a signal hits the whole process); use w:cancel()",
  "a thread cannot outlive its process; join it or cancel it",
  thread_fd, thread_release, thread_destroy, thread_spare};
