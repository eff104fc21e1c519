/* arena_lua.c - the arena seen from Lua: pt.configure, pt.shm_stats,
 * pt._shm_check, pt.release and pt._shm_release, the arena's error, and
 * the fork and exit hooks of arena.c and shm.c (which know no Lua). */
#include "arena_lua.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* The arena could not be mapped: nil, the arena's message, errno. */
int pt_push_shm_error(lua_State *L, int err) {
  lua_pushnil(L);
  lua_pushstring(L, pt_shm_errmsg());
  lua_pushinteger(L, err);
  return 3;
}

void pt_shm_init_process(void) {
  pt_atfork_child(pt_shm_after_fork_child);
  pt_on_child_exit(pt_shm_handles_exit_child);
}

/* ---- handle kinds ----------------------------------------------------------------- */

static const pt_shm_kind *kinds[PT_NKINDS];   /* atomic: set by every state's open */

void pt_shm_register_kind(int kind, const pt_shm_kind *k) {
  __atomic_store_n(&kinds[kind], k, __ATOMIC_RELEASE);
}

/* Ask each kind in turn (table first, then array). */
static int for_kinds(lua_State *L, int drop) {
  int i;
  for (i = 1; i < PT_NKINDS; i++) {
    const pt_shm_kind *k = __atomic_load_n(&kinds[i], __ATOMIC_ACQUIRE);
    if (k && (drop ? k->drop_count : k->release)(L, 1)) return 1;
  }
  return 0;
}

/* pt.release(x): drop this handle's reference now (shared table or array);
   using the handle afterwards is an error.  Safe to call twice. */
static int shm_release(lua_State *L) {
  if (for_kinds(L, 0)) return 0;
  return luaL_argerror(L, 1, lua_pushfstring(L, "shared table or array expected, got %s",
                                             luaL_typename(L, 1)));
}

/* pt._shm_release(x): INTERNAL, for the specs only, never for programs.
   Drops one count on the shared table or shared array x names, as a count
   dropped too often would, and leaves x as it is: when that was the last
   count the object is freed under x, and every later use of x must raise
   instead of touching the memory. */
static int shm_release_internal(lua_State *L) {
  if (for_kinds(L, 1)) return 0;
  return luaL_argerror(L, 1, lua_pushfstring(L, "shared table or shared array expected, got %s",
                                             luaL_typename(L, 1)));
}

/* ---- configuration and statistics ------------------------------------------------------ */

/* pt.configure{ shm_size = v }: v (at -1) is a number of bytes or a size
   like "256M"; refused with the reason (too small, more than an arena may
   hold, more than the address-space limit, 64-bit overflow). */
static void configure_size(lua_State *L) {
  uint64_t size = 0;
  char why[PT_SHM_WHYLEN];
  if (lua_type(L, -1) == LUA_TNUMBER) {
    lua_Number n = lua_tonumber(L, -1);
    if (!(n >= 0) || (n < 18446744073709551615.0 && n != floor(n)))
      luaL_argerror(L, 1, "shm_size must be a whole number of bytes >= 1M, or a size like \"256M\"");
    size = n >= 18446744073709551615.0 ? ~0ULL : (uint64_t)n;
  } else if (lua_type(L, -1) == LUA_TSTRING) {
    int r = pt_shm_parse_size(lua_tostring(L, -1), &size);
    if (r == -1)
      luaL_argerror(L, 1, lua_pushfstring(L, "shm_size: '%s' is not a size (write it like 16M, "
                                             "1G or a number of bytes)", lua_tostring(L, -1)));
    if (r == -2) size = ~0ULL;
  } else {
    luaL_argerror(L, 1, "shm_size must be a number of bytes or a size like \"256M\"");
  }
  switch (pt_shm_configure_size(size, why, sizeof why)) {
    case -1: luaL_argerror(L, 1, lua_pushfstring(L, "shm_size: %s", why)); break;
    case -2: luaL_error(L, "shm_size: %s", why); break;
    default: break;
  }
}

/* The options that name a signal: their setter (NULL, or why not). */
typedef const char *(*signal_setter)(double n);

static signal_setter signal_option(const char *k) {
  if (strcmp(k, "cancel_signal") == 0) return pt_set_cancel_signal;
  if (strcmp(k, "recv_signal") == 0) return pt_set_recv_signal;
  if (strcmp(k, "_recv_probe") == 0) return pt_set_recv_probe;   /* specs only */
  return NULL;
}

/* pt.configure{ key = value, ... }: every option of the module. */
static int l_configure(lua_State *L) {
  signal_setter set;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    if (k && strcmp(k, "shm_size") == 0) {
      configure_size(L);
    } else if (k && (set = signal_option(k)) != NULL) {
      const char *why = set(lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : -1);
      if (why) return luaL_error(L, "configure: %s", why);
    } else if (k) {
      return luaL_argerror(L, 1, lua_pushfstring(L, "unknown option '%s'", k));
    } else {
      return luaL_argerror(L, 1, "option names must be strings");
    }
    lua_pop(L, 1);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static void set_count(lua_State *L, const char *name, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, name);
}

/* pt.shm_stats() -> { size, used, peak, objects, recoveries,
   alloc_recoveries, mapped } */
static int shm_stats(lua_State *L) {
  pt_shm_stat st;
  pt_shm_getstats(&st);
  lua_createtable(L, 0, 7);
  set_count(L, "size", st.size);
  set_count(L, "used", st.used);
  set_count(L, "peak", st.peak);
  set_count(L, "objects", st.objects);
  set_count(L, "recoveries", st.recoveries);
  set_count(L, "alloc_recoveries", st.alloc_recoveries);
  lua_pushboolean(L, st.mapped);
  lua_setfield(L, -2, "mapped");
  return 1;
}

/* pt._shm_check() -> true | false, what is wrong (for the specs) */
static int shm_check(lua_State *L) {
  const char *bad = pt_shm_check();
  if (!bad) { lua_pushboolean(L, 1); return 1; }
  lua_pushboolean(L, 0);
  lua_pushstring(L, bad);
  return 2;
}

void pt_open_arena(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"configure", l_configure}, {"shm_stats", shm_stats}, {"_shm_check", shm_check},
    {"release", shm_release}, {"_shm_release", shm_release_internal}, {NULL, NULL}};
  pt_shm_init_process();
  pt_setfuncs(L, fns);
}
