/* codec.c - the Lua face of the codec: pt.encode, pt.decode, pt.discard
 * (for pools and tests), and its setup.  codec.h describes the format
 * and the codec's other files. */
#include "codec.h"

/* A string of pt.encode ends in a seal: its body's length (4 bytes, little
   endian, mixed with a constant).  The format itself has no count, so
   without it a message cut between two values, or with bytes after it,
   would decode to fewer or more values (and a cut after the ticket would
   take it, the rest then "already decoded").  Pipes and channels frame
   their messages themselves and carry no seal. */
#define SEAL_LEN 4
#define SEAL_MIX 0x50544d53u

int pt_seal(pt_buf *b) {
  uint32_t v = (uint32_t)b->len ^ SEAL_MIX;
  int i;
  if (pt_buf_reserve(b, SEAL_LEN)) {
    pt_discard(b->data ? b->data : "", b->len);   /* drop what the body holds */
    return -1;
  }
  for (i = 0; i < SEAL_LEN; i++) b->data[b->len++] = (char)(v >> (8 * i));
  return 0;
}

size_t pt_unseal(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s + n - SEAL_LEN;
  uint32_t v = 0;
  int i;
  if (n < SEAL_LEN) return (size_t)-1;
  for (i = 0; i < SEAL_LEN; i++) v |= (uint32_t)u[i] << (8 * i);
  return (v ^ SEAL_MIX) == (uint32_t)(n - SEAL_LEN) ? n - SEAL_LEN : (size_t)-1;
}

/* Encode the values from idx (n of them) and seal them into b: NULL, or
   the error (in err). */
static const char *encode_sealed(lua_State *L, int idx, int n, pt_buf *b, char *err,
                                 size_t errlen) {
  if (!pt_encode(L, idx, n, "values", b, err, errlen)) return err;
  return pt_seal(b) ? CODEC_OOM : NULL;
}

static int l_encode(lua_State *L) {
  pt_buf b;
  char err[PT_ERRLEN];
  const char *bad;
  pt_buf_init(&b);
  if ((bad = encode_sealed(L, 1, lua_gettop(L), &b, err, sizeof err))) {
    pt_buf_free(&b);
    return luaL_error(L, "encode: %s", bad);
  }
  lua_pushlstring(L, b.data, b.len);
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
  const char *bad;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checkany(L, 2);
  pt_buf_init(&b);
  if ((bad = encode_sealed(L, 3, lua_gettop(L) - 2, &b, err, sizeof err))) {
    pt_buf_free(&b);
    return luaL_error(L, "%s", bad);
  }
  lua_pushvalue(L, 2);
  lua_pushlstring(L, b.data, b.len);
  pt_buf_free(&b);
  lua_pushvalue(L, -1);
  lua_insert(L, -3);                    /* L: ... s k s */
  lua_rawset(L, 1);
  return 1;
}

/* The message argument: a string (a number is not converted); *n is its
   body's length, or (size_t)-1 when the seal is missing or wrong. */
static const char *message_arg(lua_State *L, size_t *n) {
  const char *s;
  luaL_checktype(L, 1, LUA_TSTRING);
  s = lua_tolstring(L, 1, n);
  *n = pt_unseal(s, *n);
  return s;
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
  if (n == (size_t)-1) return luaL_error(L, "decode: corrupt message");
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
  if (n == (size_t)-1) return luaL_error(L, "discard: corrupt message");
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
