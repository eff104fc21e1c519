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
    return luaL_error(L, "encode: %s", err);
  }
  lua_pushlstring(L, b.data ? b.data : "", b.len);
  pt_buf_free(&b);
  return 1;
}

/* pt._encode_into(t, k, ...) (internal, pools): pt.encode(...), the message
   also stored in t[k] (raw) before it returns, so that no cancellation or
   Ctrl-C (which raise at the next instruction of Lua) comes between the
   counts the message takes and a place where the pool finds it. */
static int l_encode_into(lua_State *L) {
  pt_buf b;
  char err[PT_ERRLEN];
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checkany(L, 2);
  pt_buf_init(&b);
  if (!pt_encode(L, 3, lua_gettop(L) - 2, "values", &b, err, sizeof err)) {
    pt_buf_free(&b);
    return luaL_error(L, "%s", err);
  }
  lua_pushvalue(L, 2);
  lua_pushlstring(L, b.data ? b.data : "", b.len);
  pt_buf_free(&b);
  lua_pushvalue(L, -1);
  lua_insert(L, -3);                    /* L: ... s k s */
  lua_rawset(L, 1);
  return 1;
}

/* The message argument: a string (a number is not converted). */
static const char *message_arg(lua_State *L, size_t *n) {
  luaL_checktype(L, 1, LUA_TSTRING);
  return lua_tolstring(L, 1, n);
}

/* Raise msg named for fn ("decode", "discard"); the checker's own texts
   already say "decode: ", which becomes fn's name. */
static int raise_named(lua_State *L, const char *fn, const char *msg) {
  if (strncmp(msg, "decode: ", 8) == 0) msg += 8;
  return luaL_error(L, "%s: %s", fn, msg);
}

static int l_decode(lua_State *L) {
  size_t n;
  const char *s = message_arg(L, &n);
  int r;
  lua_settop(L, 1);
  r = pt_decode(L, s, n);
  if (r < 0) return raise_named(L, "decode", lua_tostring(L, -1));
  return r;
}

/* pt.discard(s): release what an encoded string holds, without decoding.
   Bytes that are not a whole message raise as decode does (nothing is
   released: a damaged reference could name another object); a message
   discarded or decoded before is a no-op. */
static int l_discard(lua_State *L) {
  size_t n;
  const char *s = message_arg(L, &n), *bad;
  int has_ticket;
  pt_ticket t;
  bad = pt_codec_check_message(s, n, &has_ticket, &t);
  if (bad) return raise_named(L, "discard", bad);
  pt_discard(s, n);
  return 0;
}

void pt_open_codec(lua_State *L) {
  static const luaL_Reg fns[] = {{"encode", l_encode}, {"decode", l_decode},
                                 {"discard", l_discard}, {"_encode_into", l_encode_into},
                                 {NULL, NULL}};
  /* The key exists before any fork, so every process of the tree shares it. */
  pt_codec_ref_open();
  pt_setfuncs(L, fns);
}
