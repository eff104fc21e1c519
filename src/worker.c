/* worker.c - the worker handle: one interface over threads and processes
 * (join, status, cancel, kill, info, fd), pt.spawn, pt.detach.  It knows
 * the kinds only through their ops (worker.h), registered by core.c. */
#include "worker.h"
#include "handle.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Where a handle's answer is cached: its user value on 5.4, else a weak
   registry table keyed by the handle. */
#if LUA_VERSION_NUM < 504
#define ANSWERS_KEY "procthread.answers"
#endif

#define MAX_KINDS 4
static const pt_worker_ops *kinds[MAX_KINDS + 1];   /* NULL-ended */
static const char *kind_names[MAX_KINDS + 1];

void pt_worker_register(const pt_worker_ops *ops) {
  int i;
  for (i = 0; i < MAX_KINDS && kinds[i] && kinds[i] != ops; i++) {}
  if (i == MAX_KINDS || kinds[i]) return;
  kind_names[i] = ops->name;
  kinds[i] = ops;
}

typedef struct handle {
  pt_worker *w;              /* NULL once its __gc ran */
  pid_t owner;               /* the process that made the handle */
} handle;

/* The toolkit's key for worker handles (handle.h). */
static const char worker_key;
#define WORKER_KEY ((const void *)&worker_key)

/* Not yet released (its __gc has not run). */
static int handle_live(const void *v) { return ((const handle *)v)->w != NULL; }

/* The worker handle at i, or NULL (test) / raise (check); fast from the
   handle's methods and metamethods (their upvalues: handle.h).  Unlike
   pt_udata_test it compares the metatable every time and remembers
   nothing: a handle is new at every spawn, so the kind's memo of the
   last two seen was written at every join, right after the fork -- one
   copy-on-write fault of the parent's heap per process spawn + join. */
static handle *test_handle(lua_State *L, int i) {
  void *p;
  int ours;
  if (lua_touserdata(L, lua_upvalueindex(2)) != WORKER_KEY)
    return (handle *)pt_testudata(L, i, PT_WORKER_MT);
  p = lua_touserdata(L, i);
  if (!p || !lua_getmetatable(L, i)) return NULL;
  ours = lua_rawequal(L, -1, lua_upvalueindex(1));
  lua_pop(L, 1);
  return ours ? (handle *)p : NULL;
}

static handle *check_handle(lua_State *L, int i) {
  handle *h = test_handle(L, i);
  if (!h) pt_typeerror(L, i, PT_WORKER_MT);
  return h;
}

void pt_worker_init(pt_worker *w, const pt_worker_ops *ops, int kind) {
  w->ops = ops;
  w->kind = kind;
  w->refs = 1;
  w->user_fd = w->lifeline = w->lifeline_r = -1;
  w->exit_code = w->signal = -1;
  pt_buf_init(&w->result);
}

pt_worker *pt_worker_new(const pt_worker_ops *ops, int kind, size_t size) {
  pt_worker *w = (pt_worker *)calloc(1, size);
  if (w) pt_worker_init(w, ops, kind);
  return w;
}

void pt_worker_fini(pt_worker *w) {
  pt_close(w->user_fd);
  if (!w->result_is_error) pt_discard(w->result.data, w->result.len);
  pt_buf_free(&w->result);
}

void pt_worker_free(pt_worker *w) {
  pt_worker_fini(w);
  free(w);
}

void pt_worker_push(lua_State *L, pt_worker *w) {
  handle *h = (handle *)pt_newuserdata(L, sizeof *h);
  h->w = w;
  h->owner = pt_pid();
  luaL_getmetatable(L, PT_WORKER_MT);
  lua_setmetatable(L, -2);
  pt_lifecycle_arm(L);                  /* the at-exit sentinel stays newest */
}

int pt_worker_get(lua_State *L, int i, pt_worker **w) {
  handle *h = test_handle(L, i);
  *w = h && h->owner == pt_pid() ? h->w : NULL;
  return h != NULL;
}

/* The record of the handle at index 1 for method `op`.  A handle whose
   __gc has run (a finalizer may still reach it at lua_close) raises. */
static pt_worker *check(lua_State *L, const char *op) {
  handle *h = check_handle(L, 1);
  if (h->owner != pt_pid())
    luaL_error(L, "%s: this worker belongs to another process (pid %d)", op, (int)h->owner);
  if (!h->w) luaL_error(L, "%s: worker handle has been released", op);
  return h->w;
}

/* The worker's id; a new thread publishes its own first thing. */
static int worker_id(pt_worker *w) {
  int id = __atomic_load_n(&w->id, __ATOMIC_ACQUIRE);
  while (id == 0 && !__atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) {
    usleep(50);
    id = __atomic_load_n(&w->id, __ATOMIC_ACQUIRE);
  }
  return id;
}

static const char *signal_name(int sig);         /* "SIGSEGV", or NULL */

/* A worker that failed with no message kept: the only way there is an
   allocation of the message's copy that failed (a thread's error, a
   process's "exit status unknown"). */
#define PT_LOST_ERROR_MSG "not enough memory (the worker's error message could not be kept)"

static int wait_for(pt_worker *w, double timeout) { return w->ops->wait(w, timeout); }

/* ---- the answer: true, results... | false, err ------------------------ */

static void push_errstring(lua_State *L, pt_worker *w) {
  char msg[96];
  const char *name;
  if (w->status == W_CANCELLED) {
    lua_pushliteral(L, PT_CANCELLED_MSG);
  } else if (w->result_is_error && w->result.len) {
    lua_pushlstring(L, w->result.data, w->result.len);
  } else if (w->signal > 0) {
    name = signal_name(w->signal);
    snprintf(msg, sizeof msg, "killed by signal %d (%s)", w->signal, name ? name : "?");
    lua_pushstring(L, msg);
  } else if (w->exit_code >= 0) {
    snprintf(msg, sizeof msg, "exited with code %d", w->exit_code);
    lua_pushstring(L, msg);
  } else {
    /* a failure whose message could not be kept (set_error, settle) */
    lua_pushliteral(L, PT_LOST_ERROR_MSG);
  }
}

/* A worker that succeeded with no results (the common spawn and join):
   its answer is the boolean true alone, made again at every ask and
   never stored -- nothing allocated, so a spawn leaves less garbage and
   the heap a fork copies the page tables of stays smaller, and nothing
   written (the handle's user value, or on 5.1-5.3 the answers table:
   a page of the parent's heap the join wrote while the child ran, one
   more copy-on-write fault a process spawn + join).  Asked only while no
   answer is stored: a decoded one leaves w->result empty too. */
static int plain_success(const pt_worker *w) {
  return w->status == W_SUCCEEDED && w->result.len == 0;
}

/* Build the answer once, from the final record: the table {n = k, ...},
   or true (plain_success). */
static void push_answer(lua_State *L, pt_worker *w) {
  int t, n;
  if (plain_success(w)) {
    pt_buf_free(&w->result);
    lua_pushboolean(L, 1);
    return;
  }
  lua_newtable(L);
  t = lua_gettop(L);
  if (w->status == W_SUCCEEDED) {
    n = pt_decode(L, w->result.data ? w->result.data : "", w->result.len);
    pt_buf_free(&w->result);                 /* the references are adopted */
    if (n < 0) {                             /* message pushed */
      w->status = W_FAILED;
      lua_pushboolean(L, 0);
      lua_rawseti(L, t, 1);
      lua_rawseti(L, t, 2);
      n = 2;
    } else {
      int i;
      lua_pushboolean(L, 1);
      lua_rawseti(L, t, 1);
      for (i = n; i >= 1; i--) lua_rawseti(L, t, i + 1);
      n = n + 1;
    }
  } else {
    lua_pushboolean(L, 0);
    lua_rawseti(L, t, 1);
    push_errstring(L, w);
    lua_rawseti(L, t, 2);
    n = 2;
  }
  lua_pushinteger(L, n);
  lua_setfield(L, t, "n");
}

/* Push the cached answer of handle at index 1, or nil. */
static void get_answer(lua_State *L) {
#if LUA_VERSION_NUM >= 504
  lua_getiuservalue(L, 1, 1);
#else
  lua_getfield(L, LUA_REGISTRYINDEX, ANSWERS_KEY);
  lua_pushvalue(L, 1);
  lua_rawget(L, -2);
  lua_remove(L, -2);
#endif
}

static int unpack_answer(lua_State *L, int t) {
  int n, i;
  if (lua_isboolean(L, t)) {          /* succeeded, no results (push_answer) */
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_getfield(L, t, "n");
  n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "too many results");
  for (i = 1; i <= n; i++) lua_rawgeti(L, t, i);
  return n;
}

static void store_answer(lua_State *L, pt_worker *w) {
#if LUA_VERSION_NUM >= 504
  push_answer(L, w);
  lua_setiuservalue(L, 1, 1);
#else
  lua_getfield(L, LUA_REGISTRYINDEX, ANSWERS_KEY);
  lua_pushvalue(L, 1);
  push_answer(L, w);
  lua_rawset(L, -3);
  lua_pop(L, 1);
#endif
}

static int w_join(lua_State *L) {
  pt_worker *w = check(L, "join");
  double deadline = pt_check_deadline(L, 2, 1, "join");
  double timeout = deadline == PT_FOREVER ? -1 : fmax(0, deadline - pt_clock_now());
  int r;
  lua_settop(L, 1);
  get_answer(L);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    r = w->joined ? 1 : wait_for(w, timeout);
    if (r == -2) return pt_raise_cancelled(L);
    if (r == -1) return pt_push_oserror(L, "join", errno);
    if (r == 0) {
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    if (plain_success(w)) {
      push_answer(L, w);
      return 1;
    }
    store_answer(L, w);
    get_answer(L);
  }
  return unpack_answer(L, 2);
}

static const char *const status_names[] = {"running", "succeeded", "failed", "cancelled"};

/* The status of the worker of handle 1 (W_*), settling a finished one;
   -1 with errno on an OS error.  Leaves the stack as it was.  A finished
   worker is joined here (its fds closed): the answer is then kept, and a
   later join returns it without waiting again. */
static int current_status(lua_State *L, pt_worker *w) {
  int top = lua_gettop(L), r = w->joined ? 1 : wait_for(w, 0);
  if (r == -1) return -1;
  if (r != 1) return W_RUNNING;
  get_answer(L);
  if (lua_isnil(L, -1) && !plain_success(w)) store_answer(L, w);   /* decoding may fail it */
  lua_settop(L, top);
  return w->status;
}

static int w_status(lua_State *L) {
  int st = current_status(L, check(L, "status"));
  if (st < 0) return pt_push_oserror(L, "status", errno);
  lua_pushstring(L, status_names[st]);
  return 1;
}

/* An fd that is readable already: a worker that has ended. */
static int readable_fd(void) { return eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK); }

/* w:fd() -> an fd that becomes readable once the worker has finished.  The
   worker owns it: the same fd every call, closed when the handle is
   collected (stop watching it before letting the handle go). */
static int w_fd(lua_State *L) {
  pt_worker *w = check(L, "fd");
  if (w->user_fd < 0) {
    if (w->joined || __atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) w->user_fd = readable_fd();
    else w->user_fd = w->ops->fd(w);
    if (w->user_fd < 0) return pt_push_oserror(L, "fd", errno);
  }
  lua_pushinteger(L, w->user_fd);
  return 1;
}

static int w_cancel(lua_State *L) {
  pt_worker *w = check(L, "cancel");
  int err = w->ops->cancel(w);
  if (err) return pt_push_oserror(L, "cancel", err);
  lua_pushboolean(L, 1);
  return 1;
}

/* Constant: read by any thread, built by none. */
static const struct { const char *name; int sig; } signals[] = {
  {"SIGHUP", SIGHUP}, {"SIGINT", SIGINT}, {"SIGQUIT", SIGQUIT}, {"SIGILL", SIGILL},
  {"SIGTRAP", SIGTRAP}, {"SIGABRT", SIGABRT}, {"SIGBUS", SIGBUS}, {"SIGFPE", SIGFPE},
  {"SIGKILL", SIGKILL}, {"SIGUSR1", SIGUSR1}, {"SIGSEGV", SIGSEGV}, {"SIGUSR2", SIGUSR2},
  {"SIGPIPE", SIGPIPE}, {"SIGALRM", SIGALRM}, {"SIGTERM", SIGTERM}, {"SIGCHLD", SIGCHLD},
  {"SIGCONT", SIGCONT}, {"SIGSTOP", SIGSTOP}, {"SIGTSTP", SIGTSTP}, {"SIGTTIN", SIGTTIN},
  {"SIGTTOU", SIGTTOU}, {"SIGURG", SIGURG}, {"SIGXCPU", SIGXCPU}, {"SIGXFSZ", SIGXFSZ},
  {"SIGVTALRM", SIGVTALRM}, {"SIGPROF", SIGPROF}, {"SIGWINCH", SIGWINCH},
  {"SIGIO", SIGIO}, {"SIGPWR", SIGPWR}, {"SIGSYS", SIGSYS}, {NULL, 0}};

static const char *signal_name(int sig) {
  int i;
  for (i = 0; signals[i].name; i++)
    if (signals[i].sig == sig) return signals[i].name;
  /* the real-time ones as kill -l names them: SIGRTMIN+k below the
     middle, SIGRTMAX-k from it (glibc's SIGRTMIN is 34 or 35: at most 31) */
  if (sig >= SIGRTMIN && sig <= SIGRTMAX) {
    static const char *const up[] = {
      "SIGRTMIN", "SIGRTMIN+1", "SIGRTMIN+2", "SIGRTMIN+3", "SIGRTMIN+4", "SIGRTMIN+5",
      "SIGRTMIN+6", "SIGRTMIN+7", "SIGRTMIN+8", "SIGRTMIN+9", "SIGRTMIN+10", "SIGRTMIN+11",
      "SIGRTMIN+12", "SIGRTMIN+13", "SIGRTMIN+14", "SIGRTMIN+15"};
    static const char *const down[] = {
      "SIGRTMAX", "SIGRTMAX-1", "SIGRTMAX-2", "SIGRTMAX-3", "SIGRTMAX-4", "SIGRTMAX-5",
      "SIGRTMAX-6", "SIGRTMAX-7", "SIGRTMAX-8", "SIGRTMAX-9", "SIGRTMAX-10", "SIGRTMAX-11",
      "SIGRTMAX-12", "SIGRTMAX-13", "SIGRTMAX-14", "SIGRTMAX-15"};
    int k = sig - SIGRTMIN, m = SIGRTMAX - sig;
    if (k <= m && k < 16) return up[k];
    if (m < 16) return down[m];
    return "SIGRT";
  }
  return NULL;
}

static int check_signal(lua_State *L, int i) {
  int k;
  if (lua_isnoneornil(L, i)) return SIGTERM;
  if (lua_type(L, i) == LUA_TNUMBER) {
    lua_Number s = lua_tonumber(L, i);
    if (!(s >= 0 && s < 65) || s != (lua_Number)(int)s)
      luaL_argerror(L, i, "not a signal number (an integer from 0 to 64)");
    return (int)s;
  }
  if (lua_type(L, i) == LUA_TSTRING) {
    const char *s = lua_tostring(L, i);
    if (strncmp(s, "SIG", 3) == 0) s += 3;
    for (k = 0; signals[k].name; k++)
      if (strcmp(s, signals[k].name + 3) == 0) return signals[k].sig;
    return luaL_argerror(L, i, lua_pushfstring(L, "unknown signal '%s'", lua_tostring(L, i)));
  }
  return luaL_argerror(L, i, "signal name or number expected");
}

static int w_kill(lua_State *L) {
  pt_worker *w = check(L, "kill");
  int sig = check_signal(L, 2), err;
  if (!w->ops->signal) return luaL_error(L, "kill: %s", w->ops->no_signal);
  if (w->joined) {
    lua_pushnil(L);
    lua_pushliteral(L, "kill: the process has already ended");
    lua_pushinteger(L, ESRCH);
    return 3;
  }
  err = w->ops->signal(w, sig);
  if (err) return pt_push_oserror(L, "kill", err);
  lua_pushboolean(L, 1);
  return 1;
}

static void set_num(lua_State *L, const char *k, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static int w_info(lua_State *L) {
  pt_worker *w = check(L, "info");
  int st;
  lua_settop(L, 1);
  st = current_status(L, w);                    /* settles a finished worker */
  if (st < 0) return pt_push_oserror(L, "info", errno);
  lua_newtable(L);
  lua_pushstring(L, w->ops->name);
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, worker_id(w));
  lua_setfield(L, -2, "id");
  lua_pushstring(L, status_names[st]);
  lua_setfield(L, -2, "status");
  if (st != W_RUNNING) {
    if (w->exit_code >= 0) { lua_pushinteger(L, w->exit_code); lua_setfield(L, -2, "exit_code"); }
    if (w->signal > 0) {
      const char *name = signal_name(w->signal);
      lua_pushinteger(L, w->signal);
      lua_setfield(L, -2, "signal");
      if (name) { lua_pushstring(L, name); lua_setfield(L, -2, "signal_name"); }
    }
    set_num(L, "wall", w->t_end - w->t_start);
    set_num(L, "cpu_user", w->cpu_user);
    set_num(L, "cpu_sys", w->cpu_sys);
    lua_pushinteger(L, w->max_rss_kib);
    lua_setfield(L, -2, "max_rss_kib");
  } else {
    set_num(L, "wall", pt_clock_now() - w->t_start);
  }
  return 1;
}

/* __gc, the handle's release: safe to call again.  A forked copy's record
   is not ours: it is only forgotten (and the handle, released, is never
   remembered by the toolkit again). */
static int w_gc(lua_State *L) {
  handle *h = check_handle(L, 1);
  pt_worker *w = h->w;
  h->w = NULL;
  if (!w || h->owner != pt_pid()) return 0;
  pt_lifecycle_released(w);
  w->ops->release(w);
  return 0;
}

static int w_index(lua_State *L) {
  handle *h = check_handle(L, 1);
  const char *k = lua_tostring(L, 2);
  if (k && h->w && strcmp(k, "kind") == 0) {
    lua_pushstring(L, h->w->ops->name);
    return 1;
  }
  if (k && h->w && strcmp(k, "id") == 0) {
    lua_pushinteger(L, worker_id(h->w));
    return 1;
  }
  lua_getfield(L, lua_upvalueindex(1), "methods");   /* the metatable's */
  if (!lua_istable(L, -1)) return 0;       /* changed by the debug library */
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int w_tostring(lua_State *L) {
  handle *h = check_handle(L, 1);
  if (!h->w) lua_pushliteral(L, "procthread.Worker (released)");
  else
    lua_pushfstring(L, "procthread.Worker (%s %d)", h->w->ops->name, worker_id(h->w));
  return 1;
}

static int l_spawn(lua_State *L) {
  int k = luaL_checkoption(L, 1, NULL, kind_names);
  luaL_checktype(L, 2, LUA_TFUNCTION);        /* blamed as argument #2 */
  lua_remove(L, 1);
  return kinds[k]->spawn(L);                  /* in this frame: see pt_spawn_name */
}

/* pt._spawn_into(t, k, kind, fn, ...) (internal, pools): pt.spawn(kind,
   fn, ...), the handle also stored in t[k] (raw) before it returns, so that
   an interrupt raised as it returns (a Ctrl-C's hook, at the return
   event) finds the worker there rather than losing it. */
static int l_spawn_into(lua_State *L) {
  int n;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checkany(L, 2);
  n = lua_gettop(L);
  lua_pushcfunction(L, l_spawn);
  lua_insert(L, 3);
  lua_call(L, n - 2, LUA_MULTRET);            /* L: t k results... */
  if (!lua_isnil(L, 3)) {
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, 1);
  }
  return lua_gettop(L) - 2;
}

/* A kind's spawn runs in l_spawn's frame when pt.spawn called it (a C
   call, not a Lua one): then its errors say "spawn", as the caller
   wrote.  Asked on error paths only; at most two slots, which Lua keeps
   free for every C function however full its stack. */
const char *pt_spawn_name(lua_State *L, const pt_worker_ops *ops) {
  lua_Debug ar;
  int via_spawn = 0;
  if (lua_getstack(L, 0, &ar) && lua_getinfo(L, "f", &ar)) {
    via_spawn = lua_tocfunction(L, -1) == l_spawn;
    lua_pop(L, 1);
  }
  return via_spawn ? "spawn" : lua_pushfstring(L, "spawn_%s", ops->name);
}

void pt_spawn_check(lua_State *L, const pt_worker_ops *ops, int room) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  /* the arguments may fill the stack (5.1 and LuaJIT: some 8000 slots):
     say so, rather than fail later in whatever value was being copied */
  if (!lua_checkstack(L, room))
    luaL_error(L, "%s: too many arguments (%d): no room left on the Lua stack",
               pt_spawn_name(L, ops), lua_gettop(L) - 1);
}

/* pt.detach(w): the worker may outlive this program (lifecycle.c). */
static int l_detach(lua_State *L) {
  pt_worker *w = check(L, "detach");
  if (w->ops->no_detach) return luaL_error(L, "detach: %s", w->ops->no_detach);
  pt_lifecycle_detach(w);
  lua_pushboolean(L, 1);
  return 1;
}

/* pt._spare_threads(): OS threads kept idle for the next spawns (no
   worker, fd or shared object of theirs): leak checks leave them out. */
static int l_spare(lua_State *L) {
  int k, n = 0;
  for (k = 0; kinds[k]; k++)
    if (kinds[k]->spare) n += kinds[k]->spare();
  lua_pushinteger(L, n);
  return 1;
}

/* pt._spare_fds(): fds kept open for the next process spawns (an
   ended child's lifeline and eventfd, process.c, lifecycle.c): leak checks
   leave them out. */
static int l_spare_fds(lua_State *L) {
  lua_pushinteger(L, pt_process_spare_fds() + pt_lifeline_spare_fds());
  return 1;
}

/* pt._daemon(w [, helper]): a pool's worker, stopped at exit, never
   waited for; a helper (its watcher) is not counted in the at-exit line. */
static int l_daemon(lua_State *L) {
  pt_lifecycle_daemon(check(L, "_daemon"), lua_toboolean(L, 2));
  return 0;
}

void pt_open_worker(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"join", w_join}, {"status", w_status}, {"cancel", w_cancel},
    {"kill", w_kill}, {"info", w_info}, {"fd", w_fd}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__index", w_index}, {"__gc", w_gc}, {"__tostring", w_tostring}, {NULL, NULL}};
  static const luaL_Reg fns[] = {
    {"spawn", l_spawn}, {"_spawn_into", l_spawn_into}, {"detach", l_detach}, {"_daemon", l_daemon},
    {"_spare_threads", l_spare}, {"_spare_fds", l_spare_fds}, {NULL, NULL}};
  int k;
  pt_meta_open(L, PT_WORKER_MT, WORKER_KEY, handle_live, meta, NULL);
  luaL_getmetatable(L, PT_WORKER_MT);
  lua_newtable(L);
  pt_class_methods(L, PT_WORKER_MT, WORKER_KEY, -1, methods);
  lua_setfield(L, -2, "methods");             /* for __index (w_index) */
  lua_pop(L, 1);
#if LUA_VERSION_NUM < 504
  lua_getfield(L, LUA_REGISTRYINDEX, ANSWERS_KEY);
  if (lua_isnil(L, -1)) {
    lua_newtable(L);                             /* answers, weak keys */
    lua_newtable(L);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, ANSWERS_KEY);
  }
  lua_pop(L, 1);
#endif
  pt_setfuncs(L, fns);
  for (k = 0; kinds[k]; k++) {                 /* spawn_thread, spawn_process */
    lua_pushfstring(L, "spawn_%s", kinds[k]->name);
    lua_pushcfunction(L, kinds[k]->spawn);
    lua_settable(L, -3);
  }
}
