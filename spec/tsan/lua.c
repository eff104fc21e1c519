/* spec/tsan/lua.c - a minimal `lua script args...` linked with
 * ThreadSanitizer (PT_TSAN builds it as build/tsan-5.4/lua-tsan).  The
 * runtime cannot be put in LD_PRELOAD for the specs: sh and bash crash
 * under it, and every io.popen runs sh.  Linked here, it reaches only
 * this interpreter, and the programs it starts run plain. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

static void *nothing(void *arg) { return arg; }

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  int i, status;
  pthread_t t;
  /* ThreadSanitizer starts a thread of its own at the first
     pthread_create: start it now, or the specs count it as a leak */
  if (pthread_create(&t, NULL, nothing, NULL) == 0) pthread_join(t, NULL);
  if (!L || argc < 2) { fprintf(stderr, "usage: %s script [args]\n", argv[0]); return 1; }
  luaL_openlibs(L);
  lua_createtable(L, argc, 1);              /* arg, as lua.c makes it */
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  lua_pushcfunction(L, traceback);
  status = luaL_loadfile(L, argv[1]);
  if (status == LUA_OK) {
    for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
    status = lua_pcall(L, argc - 2, 0, 1);
  }
  if (status != LUA_OK) fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
