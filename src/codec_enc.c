/* codec_enc.c - the encoder: Lua values to bytes (see codec.h for the
 * format), and the name map it writes C functions and modules by.
 *
 * Stack layout while encoding: at the first value that is not plain
 * (nil, boolean, number, string: those are written with no stack slot)
 * enc_slots pushes three slots above the caller's top (the n values are
 * at idx.., below them), reached through enc's indexes; what a walk
 * pushes sits above those:
 *
 *   L: ... seen G names [k v ...]      (e.seen, e.globals, e.names)
 *
 * seen is nil until the first table or function, names nil until the
 * first lookup.  Every enc_* function leaves the stack as it found it,
 * on success and on failure, unless its comment says it pushes (checked
 * with STACK_CHECK in PT_DEBUG builds); the "L:" comments show the top
 * after a call whose effect is not obvious. */
#include "codec.h"
#include "shm.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#define ENC_MSGLEN 160    /* what went wrong with the value */
#define ENC_PATHLEN 512   /* where in the value: ".a[3]<upvalue x>" */
#define ENC_SEGLEN 96     /* one step of that path */

/* ---- the name map: C functions and module tables by name ----------------- */

/* registry["procthread.names"] = weak-keyed { [cfunction] = "mod\0key",
   [moduletable] = "mod" }, built from package.loaded. */
#define NAMES_KEY "procthread.names"
#define DUMPS_KEY "procthread.dumps"

/* Record module `mod` (its table at t) in the map: the table, and each C
   function it holds that has no name yet. */
static void names_add_module(lua_State *L, int map, const char *mod, size_t mlen, int t) {
  STACK_OPEN(L);
  lua_pushvalue(L, t);
  lua_rawget(L, map);                               /* L: ... name|nil */
  if (!lua_isnil(L, -1)) { lua_pop(L, 1); return; }  /* seen under a name */
  lua_pop(L, 1);
  lua_pushvalue(L, t);
  lua_pushlstring(L, mod, mlen);
  lua_rawset(L, map);                               /* map[tbl] = mod */
  lua_pushnil(L);
  while (lua_next(L, t)) {                          /* L: ... k v */
    if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
      lua_pushvalue(L, -1);
      lua_rawget(L, map);                           /* L: ... k v name|nil */
      if (lua_isnil(L, -1)) {                       /* first name wins */
        lua_pop(L, 1);
        lua_pushvalue(L, -1);                       /* L: ... k v v */
        lua_pushlstring(L, mod, mlen);
        lua_pushlstring(L, "\0", 1);
        lua_pushvalue(L, -5);                       /* L: ... k v v mod "\0" k */
        lua_concat(L, 3);                           /* L: ... k v v "mod\0k" */
        lua_rawset(L, map);                         /* L: ... k v */
      } else {
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);                                  /* L: ... k */
  }
  STACK_CHECK(L, 0);
}

/* What the map is built from: the entries of package.loaded, in
   lua_next's order.  registry[NAMES_KEY ".loaded"] = { [0] = ptrs, k1, v1,
   ..., kn, vn }: it keeps each key and value alive while the map stands,
   so that no other object can take one's address; ptrs (a userdata) holds
   their addresses, which names_fresh compares (a value with no address,
   true or a number, is no module: names_build reads tables only). */
typedef struct names_ptrs {
  size_t n;
  const void *p[1];             /* k1, v1, ..., kn, vn */
} names_ptrs;

/* The address of the key or value at i.  A string has one from
   lua_topointer on 5.4 and LuaJIT only; before, that of its bytes (an
   interned string's, or those of the one object the key is, kept alive). */
#if LUA_VERSION_NUM >= 504 || defined(LUAJIT_VERSION) || defined(PT_LUAJIT)
#define NAMES_PTR(L, i) lua_topointer(L, i)
#else
#define NAMES_PTR(L, i) \
  (lua_type(L, i) == LUA_TSTRING ? (const void *)lua_tostring(L, i) : lua_topointer(L, i))
#endif

static void names_copy_loaded(lua_State *L) {
  int i = 0, j;
  names_ptrs *np;
  STACK_OPEN(L);
  lua_newtable(L);                                  /* L: ... pins */
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");    /* L: ... pins loaded */
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {                       /* L: ... pins loaded k v */
      lua_pushvalue(L, -2);
      lua_rawseti(L, -5, ++i);                      /* pins[2j-1] = k */
      lua_rawseti(L, -4, ++i);                      /* pins[2j] = v; L: ... pins loaded k */
    }
  }
  lua_pop(L, 1);                                    /* L: ... pins */
  np = (names_ptrs *)pt_newuserdata(L, offsetof(names_ptrs, p) + (size_t)(i ? i : 1) * sizeof(void *));
  np->n = (size_t)i;                                /* L: ... pins ptrs */
  for (j = 1; j <= i; j++) {
    lua_rawgeti(L, -2, j);
    np->p[j - 1] = NAMES_PTR(L, -1);
    lua_pop(L, 1);
  }
  lua_rawseti(L, -2, 0);                            /* L: ... pins */
  lua_setfield(L, LUA_REGISTRYINDEX, NAMES_KEY ".loaded");
  STACK_CHECK(L, 0);
}

const char *pt_nocopy_name(lua_State *L) {
  const char *s;
  lua_pushliteral(L, "__nocopy");
  lua_rawget(L, -2);
  s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 1);                                    /* (the metatable keeps it) */
  return s;
}

/* Build the map and push it.  The standard libraries come first, so that a
   C function one of them holds is named after it ("string.format"), never
   after another module that keeps a copy of it and that the receiver may
   not have; _G last of them, so that a global alias the sender made
   (`unpack = table.unpack`, `fmt = string.format`), which the receiver
   does not have, never names a library function. */
static void names_build(lua_State *L) {
  static const char *const std[] = {"string", "table", "math", "io", "os",
                                    "coroutine", "debug", "package", "utf8",
                                    "bit32", "bit", "jit", "_G", NULL};
  int map, pins, loaded, i, n;
  STACK_OPEN(L);
  lua_newtable(L);                                  /* L: ... map */
  map = lua_gettop(L);
  lua_newtable(L);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, map);
  /* the copy first, and the map from it: the build allocates, so a
     finalizer may change package.loaded meanwhile; a module it adds is
     then not in the copy, and the next encode builds again (a copy taken
     after the walk could hold a module the walk missed, and pass for
     fresh with it missing from the map for good) */
  names_copy_loaded(L);
  lua_getfield(L, LUA_REGISTRYINDEX, NAMES_KEY ".loaded");  /* L: ... map pins */
  pins = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");    /* L: ... map pins loaded */
  loaded = lua_gettop(L);
  if (lua_istable(L, loaded)) {
    for (i = 0; std[i]; i++) {
      lua_getfield(L, loaded, std[i]);              /* L: ... map pins loaded tbl */
      if (lua_istable(L, -1))
        names_add_module(L, map, std[i], strlen(std[i]), lua_gettop(L));
      lua_pop(L, 1);
    }
  }
  n = (int)pt_rawlen(L, pins);
  for (i = 1; i + 1 <= n; i += 2) {
    lua_rawgeti(L, pins, i);                        /* L: ... map pins loaded mod */
    lua_rawgeti(L, pins, i + 1);                    /* L: ... map pins loaded mod tbl */
    if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1)) {
      size_t mlen;
      const char *mod = lua_tolstring(L, -2, &mlen);
      names_add_module(L, map, mod, mlen, lua_gettop(L));
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 2);                                    /* L: ... map */
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, NAMES_KEY);    /* L: ... map */
  STACK_CHECK(L, 1);
}

/* Is the map built from package.loaded as it is now?  Fresh when its
   entries are the same objects (by address: names_copy_loaded keeps them
   alive, so an address is still its object's), in the same order, and no
   more.  Addresses of objects not kept were no proof: a stamp that summed
   the values' addresses passed for the same when a module table dropped
   and collected had its address taken by a new module table, and the new
   one went out as a plain table.  An order changed without a change of
   entries only costs a rebuild. */
static int names_fresh(lua_State *L) {
  const names_ptrs *np;
  size_t i = 0;
  int fresh;
  STACK_OPEN(L);
  lua_getfield(L, LUA_REGISTRYINDEX, NAMES_KEY ".loaded");  /* L: ... pins */
  if (!lua_istable(L, -1)) { lua_pop(L, 1); return 0; }
  lua_rawgeti(L, -1, 0);
  np = (const names_ptrs *)lua_touserdata(L, -1);
  lua_pop(L, 1);                                   /* (pins keeps it) */
  fresh = np != NULL;
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");             /* L: ... pins loaded */
  if (fresh && lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {                       /* L: ... pins loaded k v */
      fresh = i + 2 <= np->n && np->p[i] == NAMES_PTR(L, -2) && np->p[i + 1] == NAMES_PTR(L, -1);
      i += 2;
      if (!fresh) { lua_pop(L, 2); break; }
      lua_pop(L, 1);                                /* L: ... pins loaded k */
    }
  }
  fresh = fresh && i == np->n;
  lua_pop(L, 2);
  STACK_CHECK(L, 0);
  return fresh;
}

/* Push the name map, built again when package.loaded changed since. */
static void names_push(lua_State *L) {
  STACK_OPEN(L);
  lua_getfield(L, LUA_REGISTRYINDEX, NAMES_KEY);    /* L: ... map|nil */
  if (lua_isnil(L, -1) || !names_fresh(L)) {
    lua_pop(L, 1);
    names_build(L);                                 /* L: ... map */
  }
  STACK_CHECK(L, 1);
}

/* ---- encoder --------------------------------------------------------------- */

typedef struct enc_ref {        /* a reference taken, released on failure */
  int type;
  pt_ref ref;
} enc_ref;

typedef struct enc {
  lua_State *L;
  pt_buf *b;
  int seen;          /* stack index: { [obj] = id, [upvalueid] = fid*256+i } */
  int names;         /* stack index of the name map (0 until needed) */
  int rebuilt;       /* the name map was rebuilt during this call */
  int globals;       /* stack index of the sender's globals */
  int nextid;
  int depth;
  int oom;           /* the dump writer could not grow the buffer */
  enc_ref *refs;
  int nrefs, caprefs;
  char msg[ENC_MSGLEN];
  char path[ENC_PATHLEN];  /* filled from the end while unwinding */
  size_t pathpos;
} enc;

static void enc_prepend(enc *e, const char *seg) {
  size_t n = strlen(seg);
  if (n > e->pathpos) return;                       /* path too long: keep the tail */
  e->pathpos -= n;
  memcpy(e->path + e->pathpos, seg, n);
}

/* Prepend the key at k as a path step: .name, ["str"], [1], [true]. */
static void enc_prepend_key(enc *e, int k) {
  lua_State *L = e->L;
  char seg[ENC_SEGLEN];
  switch (lua_type(L, k)) {
    case LUA_TSTRING: {
      size_t n, i;
      const char *s = lua_tolstring(L, k, &n);
      int ident = n > 0 && n < 60 && !(s[0] >= '0' && s[0] <= '9');
      for (i = 0; ident && i < n; i++)
        ident = (s[i] == '_' || (s[i] >= 'a' && s[i] <= 'z') ||
                 (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9'));
      if (ident) snprintf(seg, sizeof seg, ".%s", s);
      else snprintf(seg, sizeof seg, "[\"%.40s%s\"]", s, n > 40 ? "..." : "");
      break;
    }
    case LUA_TNUMBER:
      if (pt_isinteger(L, k))
        snprintf(seg, sizeof seg, "[%lld]", (long long)lua_tointeger(L, k));
      else
        snprintf(seg, sizeof seg, "[%.14g]", (double)lua_tonumber(L, k));
      break;
    case LUA_TBOOLEAN:
      snprintf(seg, sizeof seg, "[%s]", lua_toboolean(L, k) ? "true" : "false");
      break;
    default:
      snprintf(seg, sizeof seg, "[%s key]", luaL_typename(L, k));
  }
  enc_prepend(e, seg);
}

static int enc_fail(enc *e, const char *fmt, const char *arg) {
  snprintf(e->msg, sizeof e->msg, fmt, arg);
  return 0;
}

/* Every allocation that fails ends here. */
static int enc_oom(enc *e) { return enc_fail(e, "%s", CODEC_OOM); }

static int enc_put(enc *e, const void *p, size_t n) {
  if (pt_buf_add(e->b, p, n)) return enc_oom(e);
  return 1;
}

static int enc_byte(enc *e, int c) {
  unsigned char b = (unsigned char)c;
  return enc_put(e, &b, 1);
}

/* Write v as a varint at p (room for 10 bytes): the bytes written. */
static size_t put_varint(char *p, uint64_t v) {
  size_t n = 0;
  do {
    p[n] = (char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    v >>= 7;
    n++;
  } while (v);
  return n;
}

/* A string's tag and length. */
static inline size_t string_head(char *p, size_t n) {
  *p = T_STRING;
  return 1 + put_varint(p + 1, n);
}

size_t pt_encode_string_head(char *p, size_t n) { return string_head(p, n); }

static int enc_varint(enc *e, uint64_t v) {
  char tmp[10];
  return enc_put(e, tmp, put_varint(tmp, v));
}

static int enc_str(enc *e, const char *s, size_t n) {
  return enc_varint(e, n) && enc_put(e, s, n);
}

static int enc_u64(enc *e, uint64_t v) { return enc_put(e, &v, 8); }

static int enc_value(enc *e, int idx);

/* If the object at idx was seen, write its reference and return 1 (-1
   when that write failed); else give it the next id and return 0. */
static int enc_seen(enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->seen)) {          /* made on first need: most messages */
    lua_newtable(L);                    /* hold no table and no function */
    lua_replace(L, e->seen);
  }
  lua_pushvalue(L, idx);
  lua_rawget(L, e->seen);                           /* L: ... id|nil */
  if (!lua_isnil(L, -1)) {
    lua_Integer id = lua_tointeger(L, -1);
    lua_pop(L, 1);
    return enc_byte(e, T_REF) && enc_varint(e, (uint64_t)id) ? 1 : -1;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_pushinteger(L, e->nextid++);
  lua_rawset(L, e->seen);                           /* seen[obj] = id */
  return 0;
}

/* Push the name of the C function or module table at idx, or nil (0).
   A C function missing from the map rebuilds it once per call. */
static int enc_name(enc *e, int idx) {
  lua_State *L = e->L;
  if (!e->names) {
    names_push(L);                                  /* L: ... map */
    lua_replace(L, e->names = e->globals + 1);
  }
  lua_pushvalue(L, idx);
  lua_rawget(L, e->names);                          /* L: ... name|nil */
  if (lua_isnil(L, -1) && !e->rebuilt && lua_iscfunction(L, idx)) {
    lua_pop(L, 1);
    names_build(L);                                 /* L: ... map */
    lua_replace(L, e->names);
    e->rebuilt = 1;
    lua_pushvalue(L, idx);
    lua_rawget(L, e->names);                        /* L: ... name|nil */
  }
  return !lua_isnil(L, -1);                         /* the name stays pushed */
}

/* One pair of the table being walked: L: ... k v, with k at index k. */
static int enc_pair(enc *e, int k) {
  lua_State *L = e->L;
  int kt = lua_type(L, k);
  if (!enc_value(e, k)) {
    if (kt == LUA_TTABLE || kt == LUA_TFUNCTION || kt == LUA_TUSERDATA ||
        kt == LUA_TTHREAD || kt == LUA_TLIGHTUSERDATA)
      enc_prepend(e, "(a key)");
    return 0;
  }
  if (!enc_value(e, k + 1)) {
    enc_prepend_key(e, k);
    return 0;
  }
  return 1;
}

static int enc_table(enc *e, int idx) {
  lua_State *L = e->L;
  int r = enc_seen(e, idx);
  int hasmeta;
  if (r) return r > 0;
  hasmeta = lua_getmetatable(L, idx);
  if (hasmeta) {
    const char *no = pt_nocopy_name(L);          /* a kind that refuses to cross */
    r = no ? enc_fail(e, "cannot copy a %s", no) : 1;
    lua_pop(L, 1);
    if (!r) return 0;
  }
  if (!enc_byte(e, T_TABLE) || !enc_byte(e, hasmeta ? 1 : 0)) return 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {                        /* L: ... k v */
    if (!enc_pair(e, lua_gettop(L) - 1)) {
      lua_pop(L, 2);
      return 0;
    }
    lua_pop(L, 1);                                  /* L: ... k */
  }
  if (!enc_byte(e, T_END)) return 0;
  if (hasmeta) {
    lua_getmetatable(L, idx);                       /* L: ... mt */
    r = enc_value(e, lua_gettop(L));
    lua_pop(L, 1);
    if (!r) { enc_prepend(e, "(metatable)"); return 0; }
  }
  return 1;
}

static int enc_dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  enc *e = (enc *)ud;
  int r = pt_buf_add(e->b, p, n);
  (void)L;
  e->oom |= r;                                      /* -1: out of memory */
  return r;
}

/* 'C' module key, from the name map. */
static int enc_cfunction(enc *e, int idx) {
  lua_State *L = e->L;
  size_t n, mlen;
  const char *name;
  int r;
  if (!enc_name(e, idx)) {                          /* L: ... nil */
    lua_pop(L, 1);
    return enc_fail(e, "%s", "cannot copy a C function that is not in a loaded module");
  }
  name = lua_tolstring(L, -1, &n);                  /* L: ... "mod\0key" */
  mlen = strlen(name);
  if (mlen >= n) { lua_pop(L, 1); return enc_fail(e, "%s", "cannot copy this C function"); }
  r = enc_byte(e, T_CFUNC) && enc_str(e, name, mlen) &&
      enc_str(e, name + mlen + 1, n - mlen - 1) &&
      enc_u64(e, pt_codec_name_check(name, mlen, name + mlen + 1, n - mlen - 1));
  lua_pop(L, 1);
  return r;
}

/* Push the registry's cache of dumped functions: { [fn] = the bytes
   enc_bytecode writes for it }, weak keys.  A function sent again (a pool's
   task function, each submit) is copied from there, not dumped again: the
   bytes of a function never change (its upvalues are written apart). */
static void enc_push_dumps(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, DUMPS_KEY);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, DUMPS_KEY);
}

/* The bytecode of the function at idx, behind its length and check. */
static int enc_bytecode(enc *e, int idx, int nups) {
  lua_State *L = e->L;
  size_t at, start, n;
  const char *cached;
  uint64_t len, chk;
  int r;
  enc_push_dumps(L);                                /* L: ... dumps */
  lua_pushvalue(L, idx);
  lua_rawget(L, -2);                                /* L: ... dumps bytes|nil */
  cached = lua_tolstring(L, -1, &n);
  r = cached ? pt_buf_add(e->b, cached, n) : 0;
  lua_pop(L, 1);
  if (cached) {
    lua_pop(L, 1);
    return r == 0 ? 1 : enc_oom(e);
  }
  at = e->b->len;
  if (pt_buf_reserve(e->b, 16)) { lua_pop(L, 1); return enc_oom(e); }
  e->b->len += 16;                                  /* length and check, below */
  start = e->b->len;
  lua_pushvalue(L, idx);
  r = pt_dump(L, enc_dump_writer, e);
  lua_pop(L, 1);
  if (r != 0) {
    lua_pop(L, 1);
    return e->oom ? enc_oom(e) : enc_fail(e, "%s", "cannot dump function");
  }
  len = e->b->len - start;
  chk = pt_codec_code_check(e->b->data + start, (size_t)len, nups);
  memcpy(e->b->data + at, &len, 8);
  memcpy(e->b->data + at + 8, &chk, 8);
  lua_pushvalue(L, idx);
  lua_pushlstring(L, e->b->data + at, e->b->len - at);
  lua_rawset(L, -3);                                /* dumps[fn] = the bytes */
  lua_pop(L, 1);
  return 1;
}

/* Upvalue i of the function at idx (function id fid): a join to an
   upvalue written before (1 with *done set), or nothing written yet. */
static int enc_join(enc *e, int idx, int fid, int i, int *done) {
#ifdef PT_HAVE_UPVALUEID
  lua_State *L = e->L;
  void *uid = lua_upvalueid(L, idx, i);
  lua_pushlightuserdata(L, uid);
  lua_rawget(L, e->seen);                           /* L: ... fid*256+i|nil */
  if (!lua_isnil(L, -1)) {                          /* shared upvalue */
    lua_Integer v = lua_tointeger(L, -1);
    lua_pop(L, 1);
    *done = 1;
    return enc_byte(e, T_JOIN) && enc_varint(e, (uint64_t)(v >> 8)) &&
           enc_byte(e, (int)(v & 0xff));
  }
  lua_pop(L, 1);
  lua_pushlightuserdata(L, uid);
  lua_pushinteger(L, (lua_Integer)fid * 256 + i);
  lua_rawset(L, e->seen);                           /* seen[uid] = fid*256+i */
#else
  (void)e; (void)idx; (void)fid; (void)i;
#endif
  *done = 0;
  return 1;
}

/* Upvalue i of the function at idx: _ENV as the receiver's globals, else
   its value. */
static int enc_upvalue(enc *e, int idx, int i) {
  lua_State *L = e->L;
  const char *name = lua_getupvalue(L, idx, i);     /* L: ... upv */
  int r;
  if (name && strcmp(name, "_ENV") == 0) {          /* the receiver's globals */
    lua_pop(L, 1);
    return enc_byte(e, T_GLOBALS);
  }
  r = enc_value(e, lua_gettop(L));
  lua_pop(L, 1);
  if (!r) {
    char seg[ENC_SEGLEN];
    snprintf(seg, sizeof seg, "<upvalue %.60s>", name && *name ? name : "?");
    enc_prepend(e, seg);
  }
  return r;
}

static int enc_function(enc *e, int idx) {
  lua_State *L = e->L;
  lua_Debug ar;
  int r, i, nups, fid, done;
  if (lua_iscfunction(L, idx)) return enc_cfunction(e, idx);
  fid = e->nextid;
  r = enc_seen(e, idx);
  if (r) return r > 0;
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">u", &ar);                        /* pops the function */
  nups = ar.nups;
  if (!enc_byte(e, T_FUNC) || !enc_bytecode(e, idx, nups) || !enc_byte(e, nups))
    return 0;
  for (i = 1; i <= nups; i++) {
    if (!enc_join(e, idx, fid, i, &done)) return 0;
    if (!done && !enc_upvalue(e, idx, i)) return 0;
  }
  return 1;
}

/* Room for one more taken reference: made before the count is taken, so
   that a count once taken is always recorded. */
static int enc_refs_reserve(enc *e) {
  int cap;
  enc_ref *t;
  if (e->nrefs < e->caprefs) return 1;
  cap = e->caprefs ? e->caprefs * 2 : 8;
  t = realloc(e->refs, (size_t)cap * sizeof *t);
  if (!t) return 0;
  e->refs = t; e->caprefs = cap;
  return 1;
}

/* A userdata of registered type i (its metatable checked). */
static int enc_xref(enc *e, int idx, int i, const pt_xtype *xt) {
  pt_ref ref;
  const char *err;
  if (!enc_refs_reserve(e)) return enc_oom(e);
  memset(&ref, 0, sizeof ref);
  err = xt->encode(e->L, idx, &ref);
  if (err) return enc_fail(e, "%s", err);
  e->refs[e->nrefs].type = i;
  e->refs[e->nrefs].ref = ref;
  e->nrefs++;
  return enc_byte(e, T_XREF) && enc_byte(e, i) && enc_put(e, &ref, sizeof ref) &&
         enc_u64(e, pt_codec_ref_check(i, &ref));
}

static int enc_userdata(enc *e, int idx) {
  lua_State *L = e->L;
  int i, n = pt_codec_ntypes();
  if (lua_getmetatable(L, idx)) {                   /* L: ... mt */
    for (i = 0; i < n; i++) {
      const pt_xtype *xt = pt_codec_xtype(i);
      luaL_getmetatable(L, xt->tname);              /* L: ... mt tmt */
      if (lua_rawequal(L, -1, -2)) {
        lua_pop(L, 2);
        return enc_xref(e, idx, i, xt);
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  return enc_fail(e, "%s", "cannot copy userdata");
}

/* A table: the sender's globals, a module by name, or its contents. */
static int enc_anytable(enc *e, int idx) {
  lua_State *L = e->L;
  int r;
  if (lua_rawequal(L, idx, e->globals)) return enc_byte(e, T_GLOBALS);
  if (enc_name(e, idx)) {                           /* L: ... name */
    size_t n;
    const char *name = lua_tolstring(L, -1, &n);
    r = enc_byte(e, T_MODULE) && enc_str(e, name, n) &&
        enc_u64(e, pt_codec_name_check(name, n, NULL, 0));
    lua_pop(L, 1);
    return r;
  }
  lua_pop(L, 1);
  e->depth++;
  r = enc_table(e, idx);
  e->depth--;
  return r;
}

/* The tag and 8 bytes of a number: 'i' an integer (5.3+), else 'd'. */
static void put_number(lua_State *L, int idx, char *p) {
  if (pt_isinteger(L, idx)) {
    int64_t v = (int64_t)lua_tointeger(L, idx);
    p[0] = T_INT;
    memcpy(p + 1, &v, 8);
  } else {
    double d = (double)lua_tonumber(L, idx);
    p[0] = T_DOUBLE;
    memcpy(p + 1, &d, 8);
  }
}

/* A plain value (nil, boolean, number, string) straight into the buffer,
   with one reserve and no stack slot: 1 written, 0 out of memory, -1 the
   value is not plain (nothing written). */
static int enc_plain(enc *e, int idx) {
  lua_State *L = e->L;
  pt_buf *b = e->b;
  int t = lua_type(L, idx);
  size_t n, head;
  const char *s;
  char *p;
  if (t == LUA_TSTRING) {
    s = lua_tolstring(L, idx, &n);
    if (n > (size_t)-1 - PT_STRING_HEAD || pt_buf_reserve(b, PT_STRING_HEAD + n)) return enc_oom(e);
    p = b->data + b->len;
    head = string_head(p, n);
    pt_copy(p + head, s, n);
    b->len += head + n;
    return 1;
  }
  if (t != LUA_TNUMBER && t != LUA_TNIL && t != LUA_TBOOLEAN) return -1;
  if (pt_buf_reserve(b, 9)) return enc_oom(e);
  p = b->data + b->len;
  if (t == LUA_TNUMBER) { put_number(L, idx, p); b->len += 9; return 1; }
  *p = t == LUA_TNIL ? T_NIL : lua_toboolean(L, idx) ? T_TRUE : T_FALSE;
  b->len++;
  return 1;
}

static int enc_any(enc *e, int idx) {
  lua_State *L = e->L;
  int r;
  switch (lua_type(L, idx)) {
    case LUA_TTABLE: return enc_anytable(e, idx);
    case LUA_TFUNCTION:
      e->depth++;
      r = enc_function(e, idx);
      e->depth--;
      return r;
    case LUA_TUSERDATA: return enc_userdata(e, idx);
    case LUA_TTHREAD: return enc_fail(e, "%s", "cannot copy a coroutine");
    case LUA_TLIGHTUSERDATA: return enc_fail(e, "%s", "cannot copy light userdata");
    default: return enc_fail(e, "cannot copy a %s", luaL_typename(L, idx));
  }
}

/* A value that is not plain, with room on the stack for its walk.  Kept
   out of enc_value, whose plain path then has no frame to set up. */
__attribute__((noinline)) static int enc_other(enc *e, int idx) {
  lua_State *L = e->L;
  int r;
  STACK_OPEN(L);
  if (e->depth >= PT_CODEC_MAXDEPTH)
    return enc_fail(e, "%s", "nesting too deep");
  if (!lua_checkstack(L, 8)) return enc_fail(e, "%s", "Lua stack overflow");
  r = enc_any(e, idx);
  STACK_CHECK(L, 0);
  return r;
}

/* Push the walk's three slots (L: ... seen G nil), once: 1, or 0 when
   the stack has no room. */
static int enc_slots(enc *e) {
  lua_State *L = e->L;
  if (e->seen) return 1;
  if (!lua_checkstack(L, 12)) return 0;
  lua_pushnil(L);                     /* L: ... nil (seen, made on need) */
  e->seen = lua_gettop(L);
  pt_pushglobals(L);                  /* L: ... seen G */
  e->globals = lua_gettop(L);
  lua_pushnil(L);                     /* L: ... seen G nil (names, fetched on need) */
  return 1;
}

/* Write the value at idx: 1, or 0 with e->msg set.  The stack is as it
   was either way, but for the walk's slots (enc_slots: they stay until
   enc_run resets the top). */
static int enc_value(enc *e, int idx) {
  int r = enc_plain(e, idx);
  if (r >= 0) return r;
  if (!enc_slots(e)) return enc_fail(e, "%s", "Lua stack overflow");
  return enc_other(e, idx);
}

/* The message for value i that failed: what[i], or fn / args[i] for a
   call. */
static void enc_error(enc *e, int i, const char *what, int fn, char *err,
                      size_t errlen) {
  char seg[32];
  int k = fn ? i : i + 1;
  if (fn) what = i == 0 ? "fn" : "args";
  if (k > 0) {
    snprintf(seg, sizeof seg, "[%d]", k);
    enc_prepend(e, seg);
  }
  e->path[sizeof e->path - 1] = '\0';
  snprintf(err, errlen, "%s%s: %s", what, e->path + e->pathpos, e->msg);
}

/* Put the ticket in front of the message written since oldlen: NULL, or
   why not. */
static const char *enc_ticket(pt_buf *out, size_t oldlen) {
  char tk[TICKET_LEN];
  if (pt_buf_reserve(out, TICKET_LEN)) return CODEC_OOM;
  if (pt_codec_ticket_make(tk)) return pt_shm_base ? pt_shm_full_msg() : CODEC_OOM;
  memmove(out->data + oldlen + TICKET_LEN, out->data + oldlen, out->len - oldlen);
  memcpy(out->data + oldlen, tk, TICKET_LEN);
  out->len += TICKET_LEN;
  return NULL;
}

/* Encode n values from idx.  Value i is named what[i]; with fn set, value
   1 is named "fn" and value i+1 args[i]. */
static int enc_run(lua_State *L, int idx, int n, const char *what, int fn,
                   pt_buf *out, char *err, size_t errlen) {
  enc e;
  size_t oldlen = out->len;
  int top = lua_gettop(L), i;
  const char *why;
  pt_codec_key_init();
  idx = pt_absindex(L, idx);
  memset(&e, 0, offsetof(enc, msg));  /* the fields; the texts are written before read */
  e.msg[0] = '\0';
  e.L = L; e.b = out; e.nextid = 1;
  e.pathpos = sizeof e.path - 1;
  for (i = 0; i < n; i++) {
    if (!enc_value(&e, idx + i)) {
      enc_error(&e, i, what, fn, err, errlen);
      goto fail;
    }
  }
  lua_settop(L, top);                 /* L: ... (as the caller left it) */
  if (e.nrefs > 0 && (why = enc_ticket(out, oldlen)) != NULL) {
    snprintf(err, errlen, "%s: %s", what, why);
    goto fail;
  }
  free(e.refs);
  return 1;
fail:                                 /* undo: the counts taken, the bytes */
  lua_settop(L, top);
  for (i = 0; i < e.nrefs; i++) pt_codec_xtype(e.refs[i].type)->release(&e.refs[i].ref);
  out->len = oldlen;
  free(e.refs);
  return 0;
}

int pt_encode(lua_State *L, int idx, int n, const char *what, pt_buf *out,
              char *err, size_t errlen) {
  return enc_run(L, idx, n, what, 0, out, err, errlen);
}

int pt_encode_call(lua_State *L, int idx, int n, pt_buf *out, char *err,
                   size_t errlen) {
  return enc_run(L, idx, n, "args", 1, out, err, errlen);
}
