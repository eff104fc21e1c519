/* compat.h - one place for the differences between Lua 5.1-5.4 and LuaJIT.
 * Every shim carries the pt_ prefix: LuaJIT 2.1 already declares some of
 * the 5.2 names, so bare shims would clash there. */
#ifndef PT_COMPAT_H
#define PT_COMPAT_H

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

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
void pt_setfuncs(lua_State *L, const luaL_Reg *l);
void *pt_testudata(lua_State *L, int i, const char *tname);
void pt_traceback(lua_State *L, lua_State *L1, const char *msg, int level);
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

#endif
