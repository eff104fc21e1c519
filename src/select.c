/* select.c - pt.select and pt.as_completed: wait for the first of many
 * pipes, channels and workers (DESIGN.md, "Waiting for many things").
 *
 * What each object is ready on, and what a waiter sleeps on:
 *   channel   a message, or closed     a futex word: the queue's not-empty
 *                                      condition, marked as slept on
 *   thread    it has ended             its done word (a futex the thread
 *                                      wakes), or its done eventfd when
 *                                      fds are waited on anyway
 *   pipe      a message (read ahead,   its read fd
 *             or in the OS pipe), EOF
 *   process   it has ended (reaped)    its result pipe, drained as results
 *                                      come (so a child never blocks on a
 *                                      full pipe), and its pidfd
 *
 * Only futex objects: one futex_waitv over their words, the cancel flag
 * and the interrupt word (wait.c, lifecycle.c) -- the same wake-up as a
 * direct recv or join.  Any fd object: ppoll over the fds and the cancel
 * eventfd with SIGINT unmasked atomically (sys.c); threads then count by
 * their eventfds.  Channels next to fds: the kernel has no one call that
 * sleeps on futex words and fds (there is no futex fd any more), and a
 * channel's waker may be another process, which cannot reach an eventfd
 * of ours.  So a helper thread sleeps in the futex_waitv for that one wait
 * and writes an eventfd the ppoll watches; it is stopped by a futex word
 * of its own.  No timer anywhere, except for a process worker on a kernel
 * without pidfds (Linux < 5.3), which is looked at every 10 ms.
 */
#include "handle.h"
#include "queue.h"
#include "wait.h"
#include "worker.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define CHANNEL_MT "procthread.Channel"
#define SELECT_MAX 1024
#define FUTEX_ITEMS (PT_FUTEX_MAXV - 2)   /* leaves room for the interrupt and stop words */
#define NO_PIDFD_SLICE 0.01
#define STACK_ITEMS 16

enum { K_PIPE, K_CHANNEL, K_THREAD, K_PROCESS };

typedef struct item {
  int kind;
  int fd;                     /* pipe: its read fd while watched, or -1 */
  void *pipe;
  pt_off q;
  pt_worker *w;
  int dup;                    /* the same channel or thread as an earlier item */
} item;

/* One select: its items and the room its waits need. */
typedef struct sel {
  int n, nchan, nthr, nfd;    /* items; channels; threads; pipes and processes */
  int use_fds;                /* ppoll (else one futex_waitv) */
  item *it;
  struct pollfd *p;           /* 2n + 2: every fd, the helper's, the cancel fd */
  int *owner;                 /* item of each pollfd, -1: the helper's */
  const uint32_t **words;     /* FUTEX_ITEMS + 2 */
  uint32_t *vals;
  int ev;                     /* the helper's eventfd, or -1 */
} sel;

/* ---- the list -------------------------------------------------------------- */

static int bad(lua_State *L, const char *fn, int i, const char *why) {
  return luaL_error(L, "bad argument #1 to '%s' (list[%d] %s)", fn, i, why);
}

static void parse_item(lua_State *L, sel *s, int i, const char *fn) {
  item *x = &s->it[i - 1];
  pt_handle *h;
  memset(x, 0, sizeof *x);
  x->fd = -1;
  if (pt_pipe_get(L, -1, &x->pipe)) {
    if (!x->pipe) bad(L, fn, i, "is a closed pipe");
    x->kind = K_PIPE;
    s->nfd++;
  } else if ((h = (pt_handle *)pt_testudata(L, -1, CHANNEL_MT)) != NULL) {
    if (!(x->q = pt_shm_handle_off(&h->h))) bad(L, fn, i, "is a released channel");
    if (!pt_obj_live(x->q, h->h.gen))
      bad(L, fn, i, "is a channel that has been freed (a count on it was dropped too often)");
    x->kind = K_CHANNEL;
    s->nchan++;
  } else if (pt_worker_get(L, -1, &x->w)) {
    if (!x->w) bad(L, fn, i, "is a worker handle that was collected or belongs to another process");
    x->kind = x->w->kind == PT_THREAD ? K_THREAD : K_PROCESS;
    if (x->kind == K_PROCESS) s->nfd++; else s->nthr++;
  } else {
    bad(L, fn, i, lua_pushfstring(L, "is a %s, not a pipe, channel or worker",
                                  luaL_typename(L, -1)));
  }
}

/* Do two items name one object (two handles of one channel or pipe too)? */
static int same_object(const item *a, const item *b) {
  return a->kind == b->kind && a->pipe == b->pipe && a->q == b->q && a->w == b->w;
}

/* Over the words one futex_waitv takes: an object listed twice is one
   word, so count each channel and thread once (quadratic, and only then:
   a list of up to 62 sleeps on a word twice instead). */
static void dedupe(sel *s) {
  int i, j;
  s->nchan = s->nthr = 0;
  for (i = 0; i < s->n; i++) {
    item *x = &s->it[i];
    if (x->kind != K_CHANNEL && x->kind != K_THREAD) continue;
    for (j = 0; j < i && !x->dup; j++)
      x->dup = !s->it[j].dup && same_object(&s->it[j], x);
    if (!x->dup) { if (x->kind == K_CHANNEL) s->nchan++; else s->nthr++; }
  }
}

/* Check the list at index `list` and make the room (on the C stack when
   small, else a userdata left on the Lua stack). */
static void parse(lua_State *L, int list, sel *s, item *stack_items, const char *fn) {
  int i, n;
  size_t np;
  char *mem;
  if (lua_type(L, list) != LUA_TTABLE)
    pt_arg_error(L, 1, fn, lua_pushfstring(L, "table expected, got %s", luaL_typename(L, list)));
  n = (int)pt_rawlen(L, list);
  if (n > SELECT_MAX) pt_arg_error(L, 1, fn, "more than 1024 objects");
  memset(s, 0, sizeof *s);
  s->n = n;
  s->ev = -1;
  np = (size_t)(2 * n + 2);
  mem = (char *)lua_newuserdata(L, (n > STACK_ITEMS ? (size_t)n * sizeof(item) : 0) +
                                       np * (sizeof(struct pollfd) + sizeof(int)) +
                                       (FUTEX_ITEMS + 2) * (sizeof(uint32_t *) + sizeof(uint32_t)));
  s->it = n > STACK_ITEMS ? (item *)mem : stack_items;
  if (n > STACK_ITEMS) mem += (size_t)n * sizeof(item);
  s->p = (struct pollfd *)mem; mem += np * sizeof(struct pollfd);
  s->words = (const uint32_t **)mem; mem += (FUTEX_ITEMS + 2) * sizeof(uint32_t *);
  s->owner = (int *)mem; mem += np * sizeof(int);
  s->vals = (uint32_t *)mem;
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    parse_item(L, s, i, fn);
    lua_pop(L, 1);
  }
  if (s->nchan + s->nthr > FUTEX_ITEMS) dedupe(s);
  if (s->nchan > FUTEX_ITEMS) pt_arg_error(L, 1, fn, "more than 62 channels");
  /* threads are futex words too, unless fds must be waited on anyway or
     there are more words than one futex_waitv takes */
  s->use_fds = s->nfd > 0 || n == 0 || s->nchan + s->nthr > FUTEX_ITEMS;
}

/* Watch the read ends of the pipes; a closed one raises (none watched). */
static void watch_pipes(lua_State *L, sel *s, const char *fn) {
  int i;
  for (i = 0; i < s->n; i++) {
    item *x = &s->it[i];
    if (x->kind != K_PIPE) continue;
    if ((x->fd = pt_pipe_watch(x->pipe)) < 0) {
      int k = i;
      while (k-- > 0) if (s->it[k].kind == K_PIPE) pt_pipe_unwatch(s->it[k].pipe);
      bad(L, fn, i + 1, "is a pipe whose read end is closed");
    }
  }
}

static void unwatch_pipes(sel *s) {
  int i;
  for (i = 0; i < s->n; i++)
    if (s->it[i].kind == K_PIPE) pt_pipe_unwatch(s->it[i].pipe);
}

/* ---- one look at everything ------------------------------------------------ */

static void add_fd(sel *s, int *np, int fd, int owner) {
  s->p[*np].fd = fd;
  s->p[*np].events = POLLIN;
  s->owner[(*np)++] = owner;
}

/* Is item i ready?  If not, add what to sleep on.  1 ready, 0 not, -1
   error (errno). */
static int look(sel *s, int i, int *nw, int *np, int *slice) {
  item *x = &s->it[i];
  int fds[2], k, r, sl;
  switch (x->kind) {
    case K_PIPE:
      if (pt_pipe_buffered(x->pipe)) return 1;
      add_fd(s, np, x->fd, i);
      return 0;
    case K_CHANNEL:
      if (pt_queue_watch(x->q, &s->words[*nw], &s->vals[*nw])) return 1;
      if (!x->dup) (*nw)++;
      return 0;
    case K_THREAD:
      if (__atomic_load_n(&x->w->done, __ATOMIC_SEQ_CST)) return 1;
      if (!s->use_fds) {
        if (!x->dup) {
          s->words[*nw] = (const uint32_t *)&x->w->done;
          s->vals[(*nw)++] = 0;
        }
        return 0;
      }
      if ((k = pt_thread_done_fd(x->w)) < 0) return -1;
      if (__atomic_load_n(&x->w->done, __ATOMIC_SEQ_CST)) return 1;
      add_fd(s, np, k, i);
      return 0;
    default:
      r = pt_process_watch(x->w, fds, &k, &sl);
      if (r != 0) return r;
      while (k-- > 0) add_fd(s, np, fds[k], i);
      *slice |= sl;
      return 0;
  }
}

/* ---- the helper thread: channels next to fds --------------------------------
   One per process, made by the first wait that needs it and kept (a thread
   start and join per wait cost 0.1-0.2 ms).  A round: the wait hands it
   the channels' words and its eventfd and makes go odd; the helper sleeps
   in futex_waitv over those words and go, writes the eventfd when a
   channel word moves, and once the wait makes go even again it says so in
   done, and sleeps on go until the next round.  A wait while another
   thread's wait has the helper makes one of its own for that one round.
   A forked child has no helper thread (fork_child, on every fork): its first such wait
   makes one.  At exit it stays asleep (the library stays mapped: core.c);
   the leak checks count it apart (pt._helper_threads). */

typedef struct helper {
  const uint32_t *words[PT_FUTEX_MAXV];
  uint32_t vals[PT_FUTEX_MAXV];
  int n, ev;
  int once;                   /* one round, then the thread ends */
  uint32_t go;                /* futex: odd while a round runs */
  uint32_t done;              /* futex: the go of the round it left */
  pthread_t t;
} helper;

static helper kept;           /* the persistent helper */
static pthread_mutex_t kept_mu = PTHREAD_MUTEX_INITIALIZER;  /* held for a round */
static int kept_up;           /* its thread runs (atomic) */

/* Sleep while *w == v (a private word; signals are blocked here). */
static void sleep_on(uint32_t *w, uint32_t v) {
  while (__atomic_load_n(w, __ATOMIC_ACQUIRE) == v) pt_futex_wait(w, v, PT_FOREVER, NULL);
}

static void *helper_main(void *arg) {
  helper *h = (helper *)arg;
  uint32_t seen = 0, g;
  uint64_t one = 1;
  for (;;) {
    sleep_on(&h->go, seen);
    g = __atomic_load_n(&h->go, __ATOMIC_ACQUIRE);
    if (g & 1) {                                  /* a round (else over already) */
      h->words[h->n] = &h->go;
      h->vals[h->n] = g;
      while (pt_futex_waitv(h->words, h->vals, h->n + 1, PT_FOREVER, NULL, NULL) == PT_INTR) {}
      if (__atomic_load_n(&h->go, __ATOMIC_ACQUIRE) == g &&
          write(h->ev, &one, sizeof one) < 0) { /* readable already */ }
      sleep_on(&h->go, g);
    }
    seen = __atomic_load_n(&h->go, __ATOMIC_ACQUIRE);
    __atomic_store_n(&h->done, seen, __ATOMIC_RELEASE);
    pt_futex_wake(&h->done, 1);
    if (h->once) return NULL;
  }
}

static int helper_spawn(helper *h) {
  sigset_t all, old;
  int e;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);    /* no signal of ours goes there */
  e = pthread_create(&h->t, NULL, helper_main, h);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (e) errno = e;
  return e ? -1 : 0;
}

/* The helper for this wait: the kept one, or own for one round.  NULL:
   none could be made (errno). */
static helper *helper_take(helper *own) {
  if (pthread_mutex_trylock(&kept_mu) == 0) {
    if (__atomic_load_n(&kept_up, __ATOMIC_ACQUIRE) || helper_spawn(&kept) == 0) {
      __atomic_store_n(&kept_up, 1, __ATOMIC_RELEASE);
      return &kept;
    }
    pthread_mutex_unlock(&kept_mu);
    return NULL;
  }
  memset(own, 0, sizeof *own);
  own->once = 1;
  return helper_spawn(own) == 0 ? own : NULL;
}

static helper *helper_start(helper *own, sel *s, int nw) {
  uint64_t v;
  helper *h;
  if (s->ev < 0 && (s->ev = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) return NULL;
  while (read(s->ev, &v, sizeof v) > 0) {}     /* from the last round */
  if ((h = helper_take(own)) == NULL) return NULL;
  memcpy(h->words, s->words, (size_t)nw * sizeof *h->words);
  memcpy(h->vals, s->vals, (size_t)nw * sizeof *h->vals);
  h->n = nw;
  h->ev = s->ev;
  __atomic_add_fetch(&h->go, 1, __ATOMIC_RELEASE);      /* odd: go */
  pt_futex_wake(&h->go, 1);
  return h;
}

/* End the round; return once the helper has left it. */
static void helper_stop(helper *h) {
  uint32_t g = __atomic_add_fetch(&h->go, 1, __ATOMIC_RELEASE), d;
  pt_futex_wake(&h->go, 1);
  while ((d = __atomic_load_n(&h->done, __ATOMIC_ACQUIRE)) != g) pt_futex_wait(&h->done, d, PT_FOREVER, NULL);
  if (h->once) pthread_join(h->t, NULL);
  else pthread_mutex_unlock(&kept_mu);
}

/* In a new child of any fork (pthread_atfork: procthread's and the
   host's alike): the helper thread is gone (kept_mu may have been held by
   a wait of another thread of the parent). */
PT_AFTER_FORK static void fork_child(void) {
  pt_mutex_reset(&kept_mu);
  memset(&kept, 0, sizeof kept);
  kept_up = 0;
}

static void watch_forks(void) { (void)pthread_atfork(NULL, NULL, fork_child); }

static int l_helper_threads(lua_State *L) {
  lua_pushinteger(L, __atomic_load_n(&kept_up, __ATOMIC_ACQUIRE) ? 1 : 0);
  return 1;
}

/* ---- the wait ------------------------------------------------------------------ */

/* Sleep on futex words alone.  PT_OK: look again. */
static int sleep_words(sel *s, int nw, double deadline) {
  pt_wake w;
  int r;
  if (pt_interrupted()) return PT_CANCELLED;       /* Ctrl-C: pt_raise_cancelled says so */
  w.cancel = pt_cancel_flag();
  w.intr_expected = 0;
  w.intr = pt_interrupt_word(&w.intr_expected);
  r = pt_futex_wait_on(s->words, s->vals, nw, deadline, &w);
  if (r == PT_INTR) return pt_interrupted() ? PT_CANCELLED : PT_OK;
  return r;
}

/* Sleep on fds (and the channels' words through a helper).  PT_OK with
   *ready >= 0: that item; PT_OK else: look again. */
static int sleep_fds(sel *s, int nw, int np, int slice, double deadline, int *ready) {
  helper own, *h = NULL;
  double until = deadline;
  int r;
  if (nw > 0) {
    if ((h = helper_start(&own, s, nw)) == NULL) return PT_ERR;
    add_fd(s, &np, s->ev, -1);
  }
  if (slice && (until < 0 || until > pt_clock_now() + NO_PIDFD_SLICE)) until = pt_clock_now() + NO_PIDFD_SLICE;
  r = pt_poll_wait(s->p, np, until);
  if (h) {
    int e = errno;
    helper_stop(h);
    errno = e;
  }
  if (r >= 0) {
    int i = s->owner[r];
    if (i >= 0 && s->it[i].kind == K_PIPE) *ready = i;   /* else: look again */
    return PT_OK;
  }
  if (r == -3) return deadline >= 0 && pt_clock_now() >= deadline ? PT_TIMEOUT : PT_OK;
  return r == -2 ? PT_CANCELLED : PT_ERR;
}

/* 1 when a futex object may be ready now (loads only: nothing armed). */
static int any_ready(void *arg) {
  sel *s = (sel *)arg;
  int i;
  for (i = 0; i < s->n; i++) {
    item *x = &s->it[i];
    if (x->kind == K_CHANNEL ? pt_queue_count(x->q) != 0
                             : __atomic_load_n(&x->w->done, __ATOMIC_ACQUIRE) != 0)
      return 1;
  }
  return 0;
}

/* Wait for the first ready item: PT_OK (*ready: its index), PT_TIMEOUT,
   PT_CANCELLED (or interrupted: pt_raise_cancelled tells), PT_ERR. */
static int run(sel *s, double deadline, int *ready) {
  int spun = 0;
  for (;;) {
    int i, nw = 0, np = 0, slice = 0, r;
    *ready = -1;
    /* before the first sleep, the spin of every wait (pt_spin_until), as
       a channel's recv does; not with fds (they would need system calls) */
    if (!spun++ && s->nfd == 0 && (deadline < 0 || deadline > pt_clock_now()))
      pt_spin_until(any_ready, s);
    for (i = 0; i < s->n; i++) {
      r = look(s, i, &nw, &np, &slice);
      if (r < 0) return PT_ERR;
      if (r > 0) { *ready = i; return PT_OK; }
    }
    if (pt_cancel_requested()) return PT_CANCELLED;
    r = s->use_fds ? sleep_fds(s, nw, np, slice, deadline, ready) : sleep_words(s, nw, deadline);
    if (r != PT_OK || *ready >= 0) return r;
  }
}

/* Select over the list at index `list`: push the ready object and return
   its index (1-based), or push the failure (nil, "timeout"...) and return
   0 with the count of values pushed in *pushed. */
static int select_list(lua_State *L, int list, double deadline, const char *fn, int *pushed) {
  item stack_items[STACK_ITEMS];
  sel s;
  int r, ready, e;
  parse(L, list, &s, stack_items, fn);
  watch_pipes(L, &s, fn);
  r = run(&s, deadline, &ready);
  e = errno;
  unwatch_pipes(&s);
  if (s.ev >= 0) pt_close(s.ev);
  lua_pop(L, 1);                                /* the room */
  if (r == PT_OK) {
    lua_rawgeti(L, list, ready + 1);
    return ready + 1;
  }
  *pushed = pt_push_status(L, r, fn, e);
  return 0;
}

/* pt.select(list [, timeout]) -> object, index | nil, "timeout" */
static int l_select(lua_State *L) {
  double deadline = pt_check_deadline(L, 2, 1, "select");
  int pushed = 0, i = select_list(L, 1, deadline, "select", &pushed);
  if (!i) return pushed;
  lua_pushinteger(L, i);
  return 2;
}

/* The iterator of pt.as_completed: upvalues the objects still pending (a
   table) and the deadline. */
static int next_completed(lua_State *L) {
  double deadline = lua_tonumber(L, lua_upvalueindex(2));
  int pushed = 0, i, n, list;
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  list = lua_gettop(L);
  n = (int)pt_rawlen(L, list);
  if (n == 0) return 0;
  i = select_list(L, list, deadline, "as_completed", &pushed);
  if (!i) return pushed;
  for (; i < n; i++) {                         /* take it out, keeping the order */
    lua_rawgeti(L, list, i + 1);
    lua_rawseti(L, list, i);
  }
  lua_pushnil(L);
  lua_rawseti(L, list, n);
  return 1;
}

/* pt.as_completed(list [, timeout]) -> iterator: each call returns the
   next object to be ready, nil when none is left, or nil, "timeout" once
   the timeout (for the whole iteration) has passed. */
static int l_as_completed(lua_State *L) {
  double deadline = pt_check_deadline(L, 2, 1, "as_completed");
  item stack_items[STACK_ITEMS];
  sel s;
  int i, k, n;
  parse(L, 1, &s, stack_items, "as_completed");   /* mistakes raise now */
  n = s.n;
  lua_createtable(L, n, 0);              /* the pending: each object once */
  for (i = 0, k = 0; i < n; i++) {
    const item *x = &s.it[i];
    int j;
    for (j = 0; j < i && !same_object(&s.it[j], x); j++) {}
    if (j < i) continue;
    lua_rawgeti(L, 1, i + 1);
    lua_rawseti(L, -2, ++k);
  }
  lua_remove(L, -2);                     /* the room */
  lua_pushnumber(L, deadline);
  lua_pushcclosure(L, next_completed, 2);
  return 1;
}

void pt_open_select(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"select", l_select}, {"as_completed", l_as_completed},
    {"_helper_threads", l_helper_threads}, {NULL, NULL}};
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, watch_forks);
  pt_setfuncs(L, fns);
}
