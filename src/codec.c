/* codec.c - the Lua face of the codec: pt.encode, pt.decode, pt.discard
 * (for pools and tests), and its setup.  codec.h describes the format
 * and the codec's other files. */
#include "codec.h"

static int l_encode(lua_State *L) {
  pt_buf b;
  char err[PT_ERRLEN];
  pt_buf_init(&b);
  if (!pt_encode(L, 1, lua_gettop(L), "values", &b, err, sizeof err)) {
    pt_buf_free(&b);
    return luaL_error(L, "%s", err);
  }
  lua_pushlstring(L, b.data ? b.data : "", b.len);
  pt_buf_free(&b);
  return 1;
}

static int l_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  int r;
  lua_settop(L, 1);
  r = pt_decode(L, s, n);
  if (r < 0) return lua_error(L);
  return r;
}

/* pt.discard(s): release what an encoded string holds, without decoding. */
static int l_discard(lua_State *L) {
  size_t n;
  const char *s;
  luaL_checktype(L, 1, LUA_TSTRING);
  s = lua_tolstring(L, 1, &n);
  pt_discard(s, n);
  return 0;
}

void pt_open_codec(lua_State *L) {
  static const luaL_Reg fns[] = {{"encode", l_encode}, {"decode", l_decode},
                                 {"discard", l_discard}, {NULL, NULL}};
  /* The key exists before any fork, so every process of the tree shares it. */
  pt_codec_ref_open();
  pt_setfuncs(L, fns);
}
