/* codec_dec.c - the decoder: bytes the walker checked back into values
 * (see codec.h for the format). */
#include "codec.h"

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>

#define DEC_ERRLEN 400   /* a module's load error, cut to 300 bytes, and its name */

typedef struct dec {
  lua_State *L;
  rd r;
  int objs;          /* stack index: { [id] = table or function } */
  int nextid;
  int depth;
  const char *err;   /* a message other than "corrupt message" */
  const char *errat; /* where the failing value started */
  int room;          /* stack slots left before the next lua_checkstack */
  int top;           /* the stack's top before the first value */
  int ontop;         /* top-level values on the stack (objs may be among them) */
  int route, k;      /* pt_decode_into: the route table's index, values kept */
  int into;          /* index of the table the values past k go to (0: none) */
  lua_Integer at;    /* where the next of them goes */
  int stored;
  char errbuf[DEC_ERRLEN];
} dec;

static int dec_value(dec *d);

/* Remember the object on top as the next id (the table is made lazily). */
static void dec_remember(dec *d) {
  lua_State *L = d->L;
  if (lua_isnil(L, d->objs)) {
    lua_newtable(L);
    lua_replace(L, d->objs);
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->objs, d->nextid++);
}

/* (Only bytes the walker let through get here: a module that is not a
   table, a loader that refuses its bytecode.)  The references before the
   current position were adopted, those from it on were not. */
static int dec_corrupt(dec *d) {
  d->r.bad = 1;
  d->errat = d->r.p;
  return 0;
}

/* Fail with message `err` for the value that started at `at`. */
static int dec_fail(dec *d, const char *err, const char *at) {
  d->err = err;
  d->errat = at;
  return 0;
}

/* Step over a u64 check (the walker compared it): 1, or 0 at the end. */
static int dec_skip_check(dec *d) {
  uint64_t chk;
  return rd_get(&d->r, &chk, 8);
}

/* Push package.loaded[name], loading the module with require when it is
   not loaded yet.  Raw lookups only: no metamethod of the receiver runs.
   On failure nothing is pushed and d->err says why. */
static int dec_module(dec *d, const char *name, size_t n) {
  lua_State *L = d->L;
  int top;
  STACK_OPEN(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");   /* L: ... loaded */
  if (lua_istable(L, -1)) {
    lua_pushlstring(L, name, n);
    lua_rawget(L, -2);                             /* L: ... loaded mod */
    lua_remove(L, -2);                             /* L: ... mod */
    if (!lua_isnil(L, -1)) { STACK_CHECK(L, 1); return 1; }
  }
  lua_pop(L, 1);
  top = lua_gettop(L);
  pt_pushglobals(L);
  lua_pushliteral(L, "require");
  lua_rawget(L, -2);
  lua_remove(L, -2);                               /* L: ... require */
  lua_pushlstring(L, name, n);
  if (lua_pcall(L, 1, 1, 0) != 0) {                /* L: ... err */
    snprintf(d->errbuf, sizeof d->errbuf,
             "a module named in the message cannot be loaded here: '%.*s': %.300s",
             (int)(n > 80 ? 80 : n), name, pt_tomessage(L, -1));
    lua_settop(L, top);
    d->err = d->errbuf;
    STACK_CHECK(L, 0);
    return 0;
  }
  STACK_CHECK(L, 1);                               /* L: ... mod */
  return 1;
}

static int dec_table(dec *d) {
  lua_State *L = d->L;
  int flags = rd_byte(&d->r), t;
  if (flags < 0 || (flags & ~1)) return dec_corrupt(d);
  lua_newtable(L);
  t = lua_gettop(L);                               /* L: ... tbl */
  dec_remember(d);
  for (;;) {
    if (d->r.p < d->r.end && *d->r.p == T_END) { d->r.p++; break; }
    if (!dec_value(d)) return 0;                   /* L: ... tbl key */
    if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER &&
                             lua_tonumber(L, -1) != lua_tonumber(L, -1)))
      return dec_corrupt(d);                       /* nil or NaN key */
    if (!dec_value(d)) return 0;                   /* L: ... tbl key val */
    lua_rawset(L, t);                              /* L: ... tbl */
  }
  if (flags & 1) {
    if (!dec_value(d)) return 0;                   /* L: ... tbl mt */
    if (!lua_istable(L, -1)) return dec_corrupt(d);
    lua_setmetatable(L, t);                        /* L: ... tbl */
  }
  return 1;
}

/* Upvalue i of the function at f shares the upvalue the message names
   ('J' fid idx, the tag read already). */
static int dec_join(dec *d, int f, int i) {
#ifdef PT_HAVE_UPVALUEID
  lua_State *L = d->L;
  uint64_t fid;
  int idx;
  if (!rd_varint(&d->r, &fid) || fid == 0 || fid >= (uint64_t)d->nextid ||
      (idx = rd_byte(&d->r)) < 1)
    return dec_corrupt(d);
  lua_rawgeti(L, d->objs, (int)fid);               /* L: ... f other */
  if (!lua_isfunction(L, -1) || lua_iscfunction(L, -1) ||
      !lua_getupvalue(L, -1, idx) || !lua_getupvalue(L, f, i))
    return dec_corrupt(d);
  lua_pop(L, 2);                                   /* L: ... f other */
  lua_upvaluejoin(L, f, i, lua_gettop(L), idx);
  lua_pop(L, 1);                                   /* L: ... f */
  return 1;
#else
  (void)f; (void)i;
  return dec_corrupt(d);
#endif
}

static int dec_function(dec *d) {
  lua_State *L = d->L;
  uint64_t len, chk;
  int nups, i, f;
  if (!rd_get(&d->r, &len, 8) || !rd_get(&d->r, &chk, 8) ||
      len > (uint64_t)(d->r.end - d->r.p))
    return dec_corrupt(d);                         /* chk: the walker checked it */
  if (pt_loadbuffer(L, d->r.p, (size_t)len, "=(procthread)") != 0) {
    lua_pop(L, 1);
    return dec_corrupt(d);
  }
  d->r.p += len;
  f = lua_gettop(L);                               /* L: ... f */
  dec_remember(d);
  if ((nups = rd_byte(&d->r)) < 0) return dec_corrupt(d);
  for (i = 1; i <= nups; i++) {
    if (d->r.p < d->r.end && *d->r.p == T_JOIN) {
      d->r.p++;
      if (!dec_join(d, f, i)) return 0;
      continue;
    }
    if (!dec_value(d)) return 0;                   /* L: ... f upv */
    if (!lua_setupvalue(L, f, i)) return dec_corrupt(d);
  }
  return 1;
}

/* A C function by name: 'C' module key. */
static int dec_cfunction(dec *d, const char *at) {
  lua_State *L = d->L;
  size_t mn, kn;
  const char *m = rd_str(&d->r, &mn), *k = m ? rd_str(&d->r, &kn) : NULL;
  if (!k || !dec_skip_check(d)) return 0;
  if (mn == 2 && memcmp(m, "_G", 2) == 0) pt_pushglobals(L);
  else if (!dec_module(d, m, mn)) { d->errat = at; return 0; }
  if (!lua_istable(L, -1)) return dec_corrupt(d);  /* L: ... mod */
  lua_pushlstring(L, k, kn);
  lua_rawget(L, -2);
  lua_remove(L, -2);                               /* L: ... fn */
  if (!lua_iscfunction(L, -1))
    return dec_fail(d, "a C function named in the message does not exist here", at);
  return 1;
}

/* An object of a registered type: 'X' type ref. */
static int dec_xref(dec *d, const char *at) {
  lua_State *L = d->L;
  const pt_xtype *xt = pt_codec_xtype(rd_byte(&d->r));
  pt_ref ref;
  const char *err;
  if (!xt || !rd_get(&d->r, &ref, sizeof ref) || !dec_skip_check(d))
    return dec_corrupt(d);
  luaL_getmetatable(L, xt->tname);                 /* L: ... mt|nil */
  if (lua_isnil(L, -1)) {            /* a new thread state: load the module */
    lua_pop(L, 1);
    if (!dec_module(d, "procthread.core", 15)) { d->errat = at; return 0; }
  }
  lua_pop(L, 1);                                   /* L: ... */
  err = xt->decode(L, &ref);         /* L: ... obj (when err is NULL) */
  if (err) return dec_fail(d, err, at);  /* not adopted: released from here */
  return 1;
}

/* Push the plain value (nil, boolean, number, string) at r's position
   and step over it: 1; or 0 when the value there is not plain or not
   whole (r as it was).  Such a value runs and loads nothing, so it needs
   no walk before it is made.  The caller makes room for one slot. */
static int dec_plain(lua_State *L, rd *r) {
  const char *p = r->p;
  size_t left = (size_t)(r->end - p);
  union { int64_t i; double d; } v;
  if (left == 0) return 0;
  switch (*p) {
    case T_NIL: lua_pushnil(L); r->p++; return 1;
    case T_FALSE: case T_TRUE: lua_pushboolean(L, *p == T_TRUE); r->p++; return 1;
    case T_INT: case T_DOUBLE:
      if (left < 9) return 0;
      memcpy(&v, p + 1, 8);
      if (*p == T_INT) lua_pushinteger(L, (lua_Integer)v.i);
      else lua_pushnumber(L, (lua_Number)v.d);
      r->p += 9;
      return 1;
    case T_STRING: {
      rd s;
      size_t n;
      const char *str;
      s.p = p + 1; s.end = r->end; s.bad = 0;
      if (!(str = rd_str(&s, &n))) return 0;
      lua_pushlstring(L, str, n);
      r->p = s.p;
      return 1;
    }
    default: return 0;
  }
}

/* Room on the stack for one more value of a message, asked for in steps
   of 64: 1, or 0 when the stack is full.  A slot pushed for anything else
   sets d->room to 0. */
static int dec_room(dec *d) {
  if (d->room == 0) {               /* near the stack's limit: one at a time */
    if (lua_checkstack(d->L, 64)) d->room = 64;
    else if (lua_checkstack(d->L, 1)) d->room = 1;
    else return 0;
  }
  d->room--;
  return 1;
}

static int dec_other(dec *d, int t, const char *at) {
  lua_State *L = d->L;
  int ok;
  switch (t) {
    case T_GLOBALS: pt_pushglobals(L); return 1;
    case T_REF: {
      uint64_t id;
      if (!rd_varint(&d->r, &id) || id == 0 || id >= (uint64_t)d->nextid)
        return dec_corrupt(d);
      lua_rawgeti(L, d->objs, (int)id);
      return 1;
    }
    case T_TABLE:
      d->depth++;
      ok = dec_table(d);
      d->depth--;
      return ok;
    case T_FUNC:
      d->depth++;
      ok = dec_function(d);
      d->depth--;
      return ok;
    case T_MODULE: {
      size_t n;
      const char *s = rd_str(&d->r, &n);
      if (!s || !dec_skip_check(d)) return 0;
      if (n == 2 && memcmp(s, "_G", 2) == 0) { pt_pushglobals(L); return 1; }
      if (!dec_module(d, s, n)) { d->errat = at; return 0; }
      return 1;
    }
    case T_CFUNC: return dec_cfunction(d, at);
    case T_XREF: return dec_xref(d, at);
    default:
      return dec_corrupt(d);
  }
}

/* Decode one value and push it (1), or fail (0: the stack is left for
   pt_decode to reset).  A plain value takes the slot its caller made
   room for; anything else asks for the room of its walk. */
static int dec_value(dec *d) {
  lua_State *L = d->L;
  const char *at = d->r.p;
  int ok;
  STACK_OPEN(L);
  if (dec_plain(L, &d->r)) return 1;
  if (d->depth >= PT_CODEC_MAXDEPTH + 2) return dec_corrupt(d);
  if (!lua_checkstack(L, 8))           /* the references from here on are released */
    return dec_fail(d, "too many values in message", at);
  ok = dec_other(d, rd_byte(&d->r), at);
  if (ok) STACK_CHECK(L, 1);
  return ok;
}

/* Check the bytes from `from` on (the rest of the message, after k plain
   values) and take its ticket: NULL, or why the message does not decode.
   A ticket is only at the very start. */
static const char *dec_check_rest(const char *from, size_t len, int k, int *has_ticket) {
  pt_ticket t;
  const char *bad = pt_codec_check_message(from, len, has_ticket, &t);
  if (!bad && k > 0 && *has_ticket) bad = "corrupt message";
  if (!bad && *has_ticket == 1) {
    int r = pt_codec_ticket_take(&t);
    if (r == 0) bad = "decode: this message was already decoded (or discarded)";
    else if (r < 0 && t.kind == TK_ARENA)
      bad = "decode: the message's shared memory is not mapped in this process";
  }
  return bad;
}

/* `at` (on the stack at i) starts a run of stores for the rest of the
   message: an integer from 1 with room for one store per byte left below
   INT_MAX (lua_rawseti takes an int on 5.1 and LuaJIT). */
static int dec_route_at(dec *d, int i) {
  lua_Number n;
  if (lua_type(d->L, i) != LUA_TNUMBER) return 0;
  n = lua_tonumber(d->L, i);
  return n >= 1 && floor(n) == n && n + (lua_Number)(d->r.end - d->r.p) <= (lua_Number)INT_MAX;
}

/* After the k-th top-level value: route[v1] a table with `into` (a
   table) and `at` (dec_route_at) sends the values after it there; `into`
   stays pushed above them (raw lookups only).  Anything else: no route. */
static void dec_route(dec *d) {
  lua_State *L = d->L;
  int dest;
  if (!lua_checkstack(L, 3)) return;
  d->room = 0;
  lua_pushvalue(L, d->top + 1 + (d->objs == d->top + 1));   /* v1, above objs if that came first */
  lua_rawget(L, d->route);                         /* L: ... dest|nil */
  dest = lua_gettop(L);
  if (lua_istable(L, dest)) {
    lua_pushliteral(L, "at");
    lua_rawget(L, dest);                           /* L: ... dest at */
    lua_pushliteral(L, "into");
    lua_rawget(L, dest);                           /* L: ... dest at into */
    if (lua_istable(L, -1) && dec_route_at(d, -2)) {
      d->at = (lua_Integer)lua_tonumber(L, -2);
      lua_replace(L, dest);                        /* L: ... into at */
      lua_pop(L, 1);
      d->into = dest;
      return;
    }
  }
  lua_settop(L, dest - 1);
}

/* A top-level value is on top: kept there (the k-th routes the rest), or
   stored into the routed table. */
static inline void dec_took(dec *d) {
  if (d->into) {
    lua_rawseti(d->L, d->into, d->at++);
    d->stored++;
    return;
  }
  if (++d->ontop == d->k && d->route) dec_route(d);
}

/* The index of the last top-level value kept on the stack (objs pushed
   after j of them sits below the others). */
static int dec_last(const dec *d) {
  int last = d->top + d->ontop;
  return d->objs && d->objs <= last ? last + 1 : last;
}

/* Remove stack slots a and b (0: none), the higher first. */
static void dec_remove2(lua_State *L, int a, int b) {
  if (a < b) { int t = a; a = b; b = t; }
  if (a) lua_remove(L, a);
  if (b) lua_remove(L, b);
}

/* pt_decode, pt_decode_head when whole is not NULL, pt_decode_into when
   d->route is set.  The plain values at the front are checked and pushed
   in one pass; the rest is walked (checked whole) before the decoder
   makes anything of it. */
static int decode(lua_State *L, dec *d, const char *data, size_t len, int *whole) {
  int top = lua_gettop(L), has_ticket;
  const char *bad;
  pt_codec_key_init();
  luaL_checkstack(L, 4, "procthread codec");
  d->L = L;
  d->r.p = data; d->r.end = data + len;
  d->top = top;
  while (dec_room(d) && dec_plain(L, &d->r)) dec_took(d);
  if (d->r.p < d->r.end) {
    bad = dec_check_rest(d->r.p, (size_t)(d->r.end - d->r.p), d->ontop + d->stored,
                         &has_ticket);
    if (bad) { lua_settop(L, top); lua_pushstring(L, bad); return -1; }
    if (has_ticket == 1) d->r.p += TICKET_LEN;
    d->nextid = 1;
    d->errat = d->r.p;
    if (!lua_checkstack(L, 1)) { dec_fail(d, "too many values in message", d->r.p); goto fail; }
    lua_pushnil(L);                      /* L: ... nil (the objects by id, made lazily) */
    d->objs = lua_gettop(L);
    d->room = 0;
    while (d->r.p < d->r.end) {
      d->errat = d->r.p;
      if (!dec_room(d)) { dec_fail(d, "too many values in message", d->r.p); goto fail; }
      if (!dec_value(d)) goto fail;      /* L: ... v1 .. vn (objs, into among them) */
      dec_took(d);
    }
  }
  dec_remove2(L, d->objs, d->into);      /* L: ... v1 .. vn */
  return d->ontop;
fail:
  if (whole) {                           /* keep the values decoded whole */
    int last = dec_last(d);
    lua_settop(L, last);
    dec_remove2(L, d->objs < last ? d->objs : 0, 0);
    *whole = d->ontop;
  } else {
    lua_settop(L, top);
  }
  /* drop the references not adopted: the failing value on */
  pt_codec_release_from(data, len, d->errat);
  lua_pushstring(L, d->err ? d->err : "corrupt message");
  return -1;
}

/* A fresh decoder's fields (its error text is written before it is read). */
static void dec_init(dec *d) { memset(d, 0, offsetof(dec, errbuf)); }

static int decode_plain(lua_State *L, const char *data, size_t len, int *whole) {
  dec d;
  dec_init(&d);
  return decode(L, &d, data, len, whole);
}

int pt_decode(lua_State *L, const char *data, size_t len) {
  return decode_plain(L, data, len, NULL);
}

int pt_decode_head(lua_State *L, const char *data, size_t len, int *whole) {
  *whole = 0;
  return decode_plain(L, data, len, whole);
}

int pt_decode_into(lua_State *L, const char *data, size_t len, int route, int k,
                   int *stored, int *whole) {
  dec d;
  int n;
  dec_init(&d);
  d.route = pt_absindex(L, route);
  d.k = k;
  *whole = 0;
  n = decode(L, &d, data, len, whole);
  *stored = d.into ? d.stored : -1;
  return n;
}
