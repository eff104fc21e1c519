/* compat.h - one place for the differences between Lua 5.1-5.4 and LuaJIT.
 * Every shim carries the pt_ prefix: LuaJIT 2.1 already declares some of
 * the 5.2 names, so bare shims would clash there. */
#ifndef PT_COMPAT_H
#define PT_COMPAT_H

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

#if LUA_VERSION_NUM >= 502
#define pt_rawlen(L, i)        lua_rawlen(L, i)
#define pt_absindex(L, i)      lua_absindex(L, i)
#define pt_setfuncs(L, l)      luaL_setfuncs(L, l, 0)
#define pt_testudata(L, i, t)  luaL_testudata(L, i, t)
#define pt_pushglobals(L)      lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS)
#define pt_traceback(L, L1, m, l) luaL_traceback(L, L1, m, l)
#define pt_loadbuffer(L, b, s, n) luaL_loadbufferx(L, b, s, n, "b")
#else
#define pt_rawlen(L, i)        lua_objlen(L, i)
#define pt_absindex(L, i) \
  (((i) > 0 || (i) <= LUA_REGISTRYINDEX) ? (i) : lua_gettop(L) + (i) + 1)
#define pt_pushglobals(L)      lua_pushvalue(L, LUA_GLOBALSINDEX)
#define pt_loadbuffer(L, b, s, n) luaL_loadbuffer(L, b, s, n)

static inline void pt_setfuncs(lua_State *L, const luaL_Reg *l) {
  for (; l->name; l++) {
    lua_pushcfunction(L, l->func);
    lua_setfield(L, -2, l->name);
  }
}

static inline void *pt_testudata(lua_State *L, int i, const char *tname) {
  void *p = lua_touserdata(L, i);
  if (p == NULL || !lua_getmetatable(L, i)) return NULL;
  luaL_getmetatable(L, tname);
  if (!lua_rawequal(L, -1, -2)) p = NULL;
  lua_pop(L, 2);
  return p;
}

/* luaL_traceback through debug.traceback (5.1 has no C one); L1 is L. */
static inline void pt_traceback(lua_State *L, lua_State *L1, const char *msg, int level) {
  (void)L1;
  lua_getglobal(L, "debug");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "traceback");
    lua_remove(L, -2);
    if (lua_isfunction(L, -1)) {
      lua_pushstring(L, msg);
      lua_pushinteger(L, level + 1);
      if (lua_pcall(L, 2, 1, 0) == 0) return;
    }
  }
  lua_pop(L, 1);
  lua_pushstring(L, msg);
}
#endif

#if LUA_VERSION_NUM >= 502 || defined(LUAJIT_VERSION) || defined(PT_LUAJIT)
#define PT_HAVE_UPVALUEID 1
#endif

#if LUA_VERSION_NUM >= 503
#define pt_isinteger(L, i)     lua_isinteger(L, i)
#define pt_dump(L, w, d)       lua_dump(L, w, d, 0)
#else
#define pt_isinteger(L, i)     0
#define pt_dump(L, w, d)       lua_dump(L, w, d)
#endif

#if LUA_VERSION_NUM >= 504
#define pt_newuserdata(L, s)   lua_newuserdatauv(L, s, 1)
#else
#define pt_newuserdata(L, s)   lua_newuserdata(L, s)
#endif

/* ---- bad-argument errors that name the function, on every Lua ------------
 * luaL_argerror asks lua_getinfo("n") for the name, which knows it only when
 * a Lua function made the call: called from C (pcall(pt.sleep, "x")), by a
 * LuaJIT tail call, or as a method from C (pcall(w.join, w, "x")), the
 * error read "bad argument #1 to '?'" (5.3/5.4 search package.loaded, but
 * never a metatable).  pt_argerror then finds the function in procthread's
 * module tables and metatables (and the method tables they hold), the way
 * 5.3's pushglobalfuncname does.  The
 * luaL_check* functions of liblua call its own luaL_argerror, so those used
 * here are redefined below on top of pt_argerror. */

/* Push the name under which table t holds the function at fi, looking
   `depth` levels of sub-tables down first (methods before metamethods). */
static inline int pt_keyof(lua_State *L, int t, int fi, int depth) {
  int pass;
  for (pass = depth > 0 ? 0 : 1; pass < 2; pass++) {
    lua_pushnil(L);
    while (lua_next(L, t)) {
      int v = lua_gettop(L);
      if (lua_type(L, -2) == LUA_TSTRING) {
        if (pass == 1 && lua_rawequal(L, v, fi)) { lua_pop(L, 1); return 1; }
        if (pass == 0 && lua_istable(L, v) && pt_keyof(L, v, fi, depth - 1)) return 1;
      }
      lua_settop(L, v - 1);
    }
  }
  return 0;
}

/* Search the tables that `where` holds under keys "procthread...". */
static inline int pt_findname(lua_State *L, int where, int fi) {
  lua_pushnil(L);
  while (lua_next(L, where)) {
    int t = lua_gettop(L);
    if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, t) &&
        strncmp(lua_tostring(L, -2), "procthread", 10) == 0 && pt_keyof(L, t, fi, 1))
      return 1;
    lua_settop(L, t - 1);
  }
  return 0;
}

static inline int pt_argerror(lua_State *L, int arg, const char *extramsg) {
  lua_Debug ar;
  int fi;
  if (!lua_getstack(L, 0, &ar))
    return luaL_error(L, "bad argument #%d (%s)", arg, extramsg);
  lua_getinfo(L, "nf", &ar);
  fi = lua_gettop(L);
  if (ar.namewhat && strcmp(ar.namewhat, "method") == 0 && --arg == 0)
    return luaL_error(L, "calling '%s' on bad self (%s)", ar.name, extramsg);
  if (!ar.name || strcmp(ar.name, "?") == 0) {      /* 5.4 says "?" for t[k](...) */
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");            /* modules */
    if ((lua_istable(L, -1) && pt_findname(L, fi + 1, fi)) ||
        (lua_settop(L, fi), pt_findname(L, LUA_REGISTRYINDEX, fi)))  /* metatables */
      ar.name = lua_tostring(L, -1);
  }
  return luaL_error(L, "bad argument #%d to '%s' (%s)", arg, ar.name ? ar.name : "?",
                    extramsg);
}

static inline int pt_typeerror(lua_State *L, int arg, const char *tname) {
  const char *got;
  if (luaL_getmetafield(L, arg, "__name") && lua_type(L, -1) == LUA_TSTRING)
    got = lua_tostring(L, -1);
  else if (lua_type(L, arg) == LUA_TLIGHTUSERDATA)
    got = "light userdata";
  else
    got = luaL_typename(L, arg);
  return pt_argerror(L, arg, lua_pushfstring(L, "%s expected, got %s", tname, got));
}

static inline lua_Number pt_checknumber(lua_State *L, int arg) {
  lua_Number n = lua_tonumber(L, arg);
  if (n == 0 && !lua_isnumber(L, arg)) pt_typeerror(L, arg, "number");
  return n;
}

static inline lua_Integer pt_checkinteger(lua_State *L, int arg) {
#if LUA_VERSION_NUM >= 503
  int ok;
  lua_Integer n = lua_tointegerx(L, arg, &ok);
  if (!ok) {
    if (lua_isnumber(L, arg)) pt_argerror(L, arg, "number has no integer representation");
    else pt_typeerror(L, arg, "number");
  }
  return n;
#else
  lua_Integer n = lua_tointeger(L, arg);
  if (n == 0 && !lua_isnumber(L, arg)) pt_typeerror(L, arg, "number");
  return n;
#endif
}

static inline const char *pt_checklstring(lua_State *L, int arg, size_t *len) {
  const char *s = lua_tolstring(L, arg, len);
  if (!s) pt_typeerror(L, arg, "string");
  return s;
}

static inline void pt_checktype(lua_State *L, int arg, int t) {
  if (lua_type(L, arg) != t) pt_typeerror(L, arg, lua_typename(L, t));
}

static inline void pt_checkany(lua_State *L, int arg) {
  if (lua_type(L, arg) == LUA_TNONE) pt_argerror(L, arg, "value expected");
}

static inline void *pt_checkudata(lua_State *L, int arg, const char *tname) {
  void *p = pt_testudata(L, arg, tname);
  if (!p) pt_typeerror(L, arg, tname);
  return p;
}

static inline int pt_checkoption(lua_State *L, int arg, const char *def,
                                 const char *const lst[]) {
  const char *name = def && lua_isnoneornil(L, arg) ? def : pt_checklstring(L, arg, NULL);
  int i;
  for (i = 0; lst[i]; i++)
    if (strcmp(lst[i], name) == 0) return i;
  return pt_argerror(L, arg, lua_pushfstring(L, "invalid option '%s'", name));
}

#undef luaL_argerror
#undef luaL_typeerror
#undef luaL_typerror
#undef luaL_checknumber
#undef luaL_checkinteger
#undef luaL_checklstring
#undef luaL_checktype
#undef luaL_checkany
#undef luaL_checkudata
#undef luaL_checkoption
#define luaL_argerror(L, a, m)        pt_argerror(L, a, m)
#define luaL_typeerror(L, a, t)       pt_typeerror(L, a, t)
#define luaL_typerror(L, a, t)        pt_typeerror(L, a, t)
#define luaL_checknumber(L, a)        pt_checknumber(L, a)
#define luaL_checkinteger(L, a)       pt_checkinteger(L, a)
#define luaL_checklstring(L, a, l)    pt_checklstring(L, a, l)
#define luaL_checktype(L, a, t)       pt_checktype(L, a, t)
#define luaL_checkany(L, a)           pt_checkany(L, a)
#define luaL_checkudata(L, a, t)      pt_checkudata(L, a, t)
#define luaL_checkoption(L, a, d, l)  pt_checkoption(L, a, d, l)

#endif
