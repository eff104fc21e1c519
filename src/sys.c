/* sys.c - OS errors (the one helper that pushes nil, msg, errno), the
 * timeout arguments, and the small utilities of the public API
 * (now, sleep, cpu_count, rusage, memory, self, cancelled, fault).
 * Blocking waits and cancellation points are cancel.c's; what a fork and
 * a worker process's exit need, fork.c's; the Lua 5.1 shims, compat.h's. */
#include "pt.h"
#include "handle.h"
#include "wait.h"
#include "rawsys.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- errors ------------------------------------------------------------- */

int pt_push_oserror(lua_State *L, const char *op, int err) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", op, strerror(err));
  lua_pushinteger(L, err);
  return 3;
}

int pt_raise_oserror(lua_State *L, const char *op, int err) {
  return luaL_error(L, "%s: %s", op, strerror(err));
}

static int call_tostring(lua_State *L) {
  return luaL_callmeta(L, 1, "__tostring");
}

/* A message handler's text for the error object at idx: a __tostring that
   raises is called protected (unprotected, LuaJIT answered "error in
   error handling" and PUC Lua the __tostring's own error in its place). */
const char *pt_tomessage(lua_State *L, int idx) {
  const char *msg = lua_tostring(L, idx);
  idx = pt_absindex(L, idx);
  if (msg) return msg;
  if (luaL_getmetafield(L, idx, "__tostring")) {
    lua_pop(L, 1);
    lua_pushcfunction(L, call_tostring);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) != 0)
      return lua_pushfstring(L, "(error object is a %s value, whose __tostring raised: %s)",
                             luaL_typename(L, idx),
                             lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
    if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  return lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
}

/* The raw system call (rawsys.h) leaves errno alone: a new child (fork
   handlers close inherited fds, PT_AFTER_FORK) runs no libc code for it
   (close and __errno_location were a page fault each there). */
PT_AFTER_FORK void pt_close(int fd) {
#ifdef PT_UNDER_TSAN
  /* ThreadSanitizer must see the close (its interceptor): a raw one let
     another thread's eventfd take the number and looked like a race */
  if (fd >= 0) close(fd);
#else
  if (fd >= 0) pt_raw_close(fd);
#endif
}

/* ---- Lua functions ----------------------------------------------------------- */

static int l_now(lua_State *L) {
  lua_pushnumber(L, pt_clock_now());
  return 1;
}

static int l_sleep(lua_State *L) {
  double s;
  int r;
  /* a number, as every timeout (pt_check_deadline): no numeric string */
  if (lua_type(L, 1) != LUA_TNUMBER)
    return luaL_argerror(L, 1, lua_pushfstring(L, "number expected, got %s", luaL_typename(L, 1)));
  s = (double)lua_tonumber(L, 1);
  if (!(s >= 0))
    return luaL_argerror(L, 1, lua_pushfstring(L, "seconds must be a number >= 0 or math.huge, "
                                                  "got %s", s != s ? "nan" : lua_tostring(L, 1)));
  /* math.huge, or beyond a century: for ever (the poll took it as EINVAL) */
  r = pt_wait_fds(NULL, 0, 0, pt_deadline(s) == PT_FOREVER ? -1 : s);
  if (r == -2) return pt_raise_cancelled(L);
  if (r == -1) return pt_push_oserror(L, "sleep: poll", errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* The CPUs this process may run on (its affinity: taskset, a cpuset, a
   container), like Python's os.process_cpu_count; the online CPUs when the
   affinity cannot be read (a machine of more CPUs than a cpu_set_t holds). */
static int l_cpu_count(lua_State *L) {
  cpu_set_t set;
  long n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
  if (n <= 0) n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? (lua_Integer)n : 1);
  return 1;
}

static double tv_seconds(struct timeval tv) {
  return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
}

static void set_num(lua_State *L, const char *k, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static int l_rusage(lua_State *L) {
  static const char *const whos[] = {"self", "children", "thread", NULL};
  static const int codes[] = {RUSAGE_SELF, RUSAGE_CHILDREN, RUSAGE_THREAD};
  int who = codes[luaL_checkoption(L, 1, "self", whos)];
  struct rusage ru;
  if (getrusage(who, &ru) != 0) return pt_push_oserror(L, "getrusage", errno);
  lua_createtable(L, 0, 8);
  set_num(L, "utime", tv_seconds(ru.ru_utime));
  set_num(L, "stime", tv_seconds(ru.ru_stime));
  set_int(L, "maxrss_kib", ru.ru_maxrss);
  set_int(L, "minflt", ru.ru_minflt);
  set_int(L, "majflt", ru.ru_majflt);
  set_int(L, "nvcsw", ru.ru_nvcsw);
  set_int(L, "nivcsw", ru.ru_nivcsw);
  return 1;
}

/* rss and pss of this process in KiB, from /proc/self/smaps_rollup (pss)
   and /proc/self/statm (rss). */
static int l_memory(lua_State *L) {
  char line[256];
  long rss = -1, pss = -1, anon = -1, shared = -1;
  FILE *f = fopen("/proc/self/smaps_rollup", "re");
  if (f) {
    while (fgets(line, sizeof line, f)) {
      long v;
      if (sscanf(line, "Rss: %ld kB", &v) == 1) rss = v;
      else if (sscanf(line, "Pss: %ld kB", &v) == 1) pss = v;
      else if (sscanf(line, "Anonymous: %ld kB", &v) == 1) anon = v;
      else if (sscanf(line, "Shared_Clean: %ld kB", &v) == 1) shared = (shared < 0 ? 0 : shared) + v;
      else if (sscanf(line, "Shared_Dirty: %ld kB", &v) == 1) shared = (shared < 0 ? 0 : shared) + v;
    }
    fclose(f);
  } else {
    long pages, res;
    f = fopen("/proc/self/statm", "re");
    if (!f) return pt_push_oserror(L, "open /proc/self/statm", errno);
    if (fscanf(f, "%ld %ld", &pages, &res) == 2)
      rss = res * (sysconf(_SC_PAGESIZE) / 1024);
    fclose(f);
  }
  lua_createtable(L, 0, 4);
  set_int(L, "rss_kib", rss);
  if (pss >= 0) set_int(L, "pss_kib", pss);
  if (anon >= 0) set_int(L, "anon_kib", anon);
  if (shared >= 0) set_int(L, "shared_kib", shared);
  return 1;
}

/* pt.self().id of the calling thread, cached: a system call at a thread's
   first call and after a fork only (pt_fork_generation). */
static PT_TLS unsigned id_gen;               /* generation + 1 when id_cache holds */
static PT_TLS lua_Integer id_cache;

static lua_Integer self_id(int kind) {
  unsigned g = pt_fork_generation() + 1;
  if (id_gen != g) {
    id_cache = kind == PT_THREAD ? (lua_Integer)syscall(SYS_gettid) : (lua_Integer)pt_pid();
    id_gen = g;
  }
  return id_cache;
}

static int self_kind(void) {
  pt_ctx *c = pt_self_ctx;
  return c ? c->kind : PT_MAIN;
}

static int l_self(lua_State *L) {
  static const char *const names[] = {"main", "thread", "process"};
  int kind = self_kind();
  lua_createtable(L, 0, 2);
  lua_pushstring(L, names[kind]);
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, self_id(kind));
  lua_setfield(L, -2, "id");
  return 1;
}

/* pt._self_id() -> pt.self().id without the table (pools check their
   owner at every call with it). */
static int l_self_id(lua_State *L) {
  lua_pushinteger(L, self_id(self_kind()));
  return 1;
}

static int l_cancelled(lua_State *L) {
  lua_pushboolean(L, pt_cancel_requested());
  return 1;
}

/* The lab's deliberate faults: a real invalid memory write (SIGSEGV), a
   real abort(), any signal raised at this thread; or the next n thread
   workers start as if no memory were left for their Lua states. */
#if defined(__GNUC__)
__attribute__((no_sanitize("undefined")))
#endif
static int l_fault(lua_State *L) {
  static const char *const kinds[] = {"segv", "abort", "signal", "nomem_start", NULL};
  int k = luaL_checkoption(L, 1, NULL, kinds);
  if (k == 3) {
    lua_Integer n = pt_check_int(L, 2, 1, 0, 1000000, "fault", "count");
    pt_fault_set_starts((int)n);
  } else if (k == 0) {
    volatile int *volatile bad = NULL;
    *bad = 1;
  } else if (k == 1) {
    abort();
  } else {
    lua_Integer sig = pt_check_int(L, 2, -1, 1, SIGRTMAX, "fault", "signal");
    raise((int)sig);
  }
  return 0;
}

void pt_open_sys(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"now", l_now}, {"sleep", l_sleep}, {"cpu_count", l_cpu_count},
    {"rusage", l_rusage}, {"memory", l_memory}, {"self", l_self},
    {"cancelled", l_cancelled}, {"fault", l_fault}, {"_self_id", l_self_id},
    {NULL, NULL}};
  pt_setfuncs(L, fns);
  lua_pushstring(L, PT_VERSION);
  lua_setfield(L, -2, "version");
}
