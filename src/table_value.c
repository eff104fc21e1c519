/* table_value.c - shared tables seen from Lua, below their functions:
 * handles, Lua values to and from keys and values, the reader (see
 * table_value.h).  The table itself is htab.c; the functions table.c. */
#include "table_value.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- handles ------------------------------------------------------------------ */

void pt_st_raise_bad(lua_State *L, int i, pt_off off, int is_handle) {
  if (!is_handle)
    luaL_argerror(L, i, lua_pushfstring(L, "shared table expected, got %s", luaL_typename(L, i)));
  if (!off) luaL_argerror(L, i, "shared table is released");
  luaL_error(L, PT_ST_FREED_MSG);
  abort();                                   /* not reached: luaL_error raises */
}

pt_shm_handle *pt_st_push_blank(lua_State *L) {
  pt_shm_handle *h = pt_newuserdata(L, sizeof(pt_shm_handle));
  memset(h, 0, sizeof *h);
  luaL_getmetatable(L, PT_ST_TNAME);
  lua_setmetatable(L, -2);
  return h;
}

void pt_st_adopt(pt_shm_handle *h, pt_off off) {
  pt_shm_track(h, off, pt_ht_gen(off), PT_KIND_TABLE, pt_ht_drop);
}

pt_off pt_st_push_new(lua_State *L) {
  pt_shm_handle *h = pt_st_push_blank(L);
  pt_off off = pt_ht_new();
  if (!off && errno == ENOMEM) {
    pt_st_collect(L);
    off = pt_ht_new();
  }
  if (off) pt_st_adopt(h, off);
  return off;
}

/* ---- errors ------------------------------------------------------------------- */

void pt_st_collect(lua_State *L) { lua_gc(L, LUA_GCCOLLECT, 0); }

int pt_st_raise_full(lua_State *L) {
  const char *msg = pt_shm_full_msg();
  return luaL_error(L, "%s: %s", pt_st_opname(L), msg);
}

int pt_st_stop_waiting(void) { return pt_cancel_requested() || pt_interrupted(); }

/* Sections last tens of nanoseconds: spin first (wait.c's lock spin). */
int pt_st_lock_slow(pt_stab *t, int r, double deadline) {
  const uint32_t *iw;
  uint32_t iv = 0;
  if (r == EBUSY) r = pt_lock_try_spin(&t->mu);
  if (r == EBUSY) {
    if (pt_st_stop_waiting()) { errno = ECANCELED; return -1; }
    iw = pt_interrupt_word(&iv);
    switch (pt_lock_wait(&t->mu, deadline, pt_self_ctx ? pt_self_ctx->cancel : NULL, iw, iv)) {
      case PT_OK: return 0;
      case PT_OWNERDEAD: return pt_ht_recover(t);
      case PT_TIMEOUT: errno = ETIMEDOUT; return -1;
      case PT_CANCELLED: errno = ECANCELED; return -1;
      case PT_INTR: pt_interrupted(); errno = ECANCELED; return -1;
      default: return -1;
    }
  }
  if (r == 0) return 0;
  if (r == EOWNERDEAD) return pt_ht_recover(t);
  errno = r;
  return -1;
}

int pt_st_raise_lock(lua_State *L) {
  if (errno == ECANCELED && pt_take_interrupt()) {
    /* A metamethod cannot return nil, "interrupted" for the interpreter's
       Ctrl-C hook to raise back in Lua: raise what that hook would, taking
       it off first as it does (left on, it fires in the message handler). */
    if (lua_gethook(L)) lua_sethook(L, NULL, 0, 0);
    return luaL_error(L, "interrupted!");
  }
  if (errno == ECANCELED) return pt_raise_cancelled(L);
  return pt_raise_oserror(L, "shared table lock", errno);
}

int pt_st_lock_error(lua_State *L) {
  if (errno == ECANCELED) return pt_raise_cancelled(L);
  return pt_push_oserror(L, "shared table lock", errno);
}

/* ---- values ------------------------------------------------------------------- */

static void tokv_number(lua_State *L, int i, pt_kv *v, int as) {
  double d;
#if LUA_VERSION_NUM >= 503
  if (as == PT_AS_KEY) {                     /* a float with an integral value */
    int isint;                               /* is that integer key, as here */
    lua_Integer n = lua_tointegerx(L, i, &isint);
    if (isint) {
      v->t = PT_V_INT;
      v->bits = (uint64_t)n;
      return;
    }
  } else if (lua_isinteger(L, i)) {
    v->t = PT_V_INT;
    v->bits = (uint64_t)lua_tointeger(L, i);
    return;
  }
#endif
  d = (double)lua_tonumber(L, i);
  if (as == PT_AS_KEY) {
    if (d != d) pt_st_store_error(L, "invalid key: NaN");
    pt_ht_number_key(v, d);
    return;
  }
  v->t = PT_V_FLT;
  memcpy(&v->bits, &d, 8);
}

/* A shared table as a value: a count taken (AS_VALUE) or not. */
__attribute__((noinline)) static int tokv_table(lua_State *L, int i, pt_kv *v, int as) {
  pt_shm_handle *h = pt_st_tohandle(L, i);
  pt_stab *t;
  if (!h) return 0;
  if (!pt_shm_handle_off(h)) {
    if (as == PT_AS_EXPECTED) return 0;
    pt_st_store_error(L, "cannot store a released shared table");
  }
  t = pt_st_handle_tab(L, h, i);
  if (as == PT_AS_VALUE) pt_shm_incref(&t->refs);
  v->t = PT_V_TAB;
  v->bits = pt_ht_off(t);
  return 1;
}

/* A plain table as a value: copied into a new shared table. */
__attribute__((noinline)) static void tokv_copy(lua_State *L, int i, pt_kv *v, int depth, int *visited) {
  pt_off o;
  i = pt_absindex(L, i);
  if (!*visited) {
    lua_newtable(L);
    *visited = lua_gettop(L);
  }
  o = pt_st_copy_plain(L, i, depth + 1, *visited);
  pt_ht_incref(o);                             /* the slot's own count */
  v->t = PT_V_TAB;
  v->bits = o;
}

/* A long string as a value: its arena copy. */
__attribute__((noinline)) static void tokv_prepare(lua_State *L, pt_kv *v) {
  if (pt_ht_prepare(v) == 0) return;
  pt_st_collect(L);
  if (pt_ht_prepare(v) != 0) pt_st_raise_full(L);
}

/* A value or key refused while storing, named by the library function it
   came through (pt.cas, pt.shared_table); a metamethod (st.k = v) names
   none. */
__attribute__((cold, noinline)) void pt_st_store_error(lua_State *L, const char *fmt, ...) {
  const char *fn = NULL, *msg;
  lua_Debug ar;
  va_list ap;
  va_start(ap, fmt);
  msg = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  if (lua_getstack(L, 0, &ar) && lua_getinfo(L, "f", &ar)) {
    fn = pt_st_fn_name(lua_tocfunction(L, -1));
    lua_pop(L, 1);
  }
  if (fn) luaL_error(L, "%s: %s", fn, msg);
  luaL_error(L, "%s", msg);
}

__attribute__((cold, noinline)) static void bad_kv(lua_State *L, int i, int as) {
  if (as == PT_AS_KEY)
    pt_st_store_error(L, "invalid key: %s (shared table keys are strings, numbers and booleans)",
                      luaL_typename(L, i));
  if (as == PT_AS_VALUE)
    pt_st_store_error(L, "cannot store a %s in a shared table", luaL_typename(L, i));
  luaL_argerror(L, i, lua_type(L, i) == LUA_TTABLE
    ? "a plain table is stored as a new shared table, so no key ever holds this one"
    : lua_pushfstring(L, "a %s can never be the value of a shared table", luaL_typename(L, i)));
}

/* The one conversion; `as` is a constant in each of the three below, so
   the compiler makes each its own function. */
static inline __attribute__((always_inline)) void tokv(lua_State *L, int i, pt_kv *v, int as,
                                                       int depth, int *visited, int type) {
  v->t = PT_V_NIL;
  v->s = NULL;
  v->len = 0;
  v->bits = 0;
  switch (type) {
    case LUA_TNIL:
      if (as == PT_AS_KEY) break;
      return;
    case LUA_TBOOLEAN:
      v->t = lua_toboolean(L, i) ? PT_V_TRUE : PT_V_FALSE;
      goto done;
    case LUA_TNUMBER:
      tokv_number(L, i, v, as);
      goto done;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, i, &len);
      pt_ht_string(v, s, len);
      if (as == PT_AS_VALUE && v->t == PT_V_LSTR) tokv_prepare(L, v);
      goto done;
    }
    case LUA_TUSERDATA:
      if (as != PT_AS_KEY && tokv_table(L, i, v, as)) return;
      break;
    case LUA_TTABLE:
      if (as != PT_AS_VALUE) break;
      tokv_copy(L, i, v, depth, visited);
      return;
    default: break;
  }
  bad_kv(L, i, as);
done:
  if (as == PT_AS_KEY) pt_ht_hash(v);
}

void pt_st_tokey_of(lua_State *L, int i, pt_kv *k, int type) { tokv(L, i, k, PT_AS_KEY, 0, NULL, type); }

void pt_st_argkey(lua_State *L, int i, pt_kv *k) {
  int t = lua_type(L, i);
  if (t == LUA_TNUMBER && lua_tonumber(L, i) != lua_tonumber(L, i))
    luaL_argerror(L, i, "invalid key: NaN");
  if (t != LUA_TNUMBER && t != LUA_TSTRING && t != LUA_TBOOLEAN)
    luaL_argerror(L, i, lua_pushfstring(L, "invalid key: %s (shared table keys are strings, "
                                           "numbers and booleans)", luaL_typename(L, i)));
  pt_st_tokey(L, i, k);
}

void pt_st_tovalue_of(lua_State *L, int i, pt_kv *v, int depth, int *visited) {
  tokv(L, i, v, PT_AS_VALUE, depth, visited, lua_type(L, i));
}

void pt_st_toexpected(lua_State *L, int i, pt_kv *e) {
  tokv(L, i, e, PT_AS_EXPECTED, 0, NULL, lua_type(L, i));
}

void pt_st_tonumber(lua_State *L, int i, pt_kv *n) {
  n->s = NULL;
  n->len = 0;
  tokv_number(L, i, n, PT_AS_VALUE);
}

void pt_st_push_kv(lua_State *L, const pt_kv *v) {
  switch (v->t) {
    case PT_V_FALSE: lua_pushboolean(L, 0); break;
    case PT_V_TRUE: lua_pushboolean(L, 1); break;
    case PT_V_INT:
#if LUA_VERSION_NUM >= 503
      lua_pushinteger(L, (lua_Integer)(int64_t)v->bits);
#else
      lua_pushnumber(L, (lua_Number)(int64_t)v->bits);
#endif
      break;
    case PT_V_FLT: {
      double d;
      memcpy(&d, &v->bits, 8);
      lua_pushnumber(L, d);
      break;
    }
    case PT_V_SSTR: {
      char b[8];
      memcpy(b, &v->bits, 8);
      lua_pushlstring(L, b, v->len);
      break;
    }
    case PT_V_LSTR: lua_pushlstring(L, v->s, v->len); break;
    default: lua_pushnil(L); break;
  }
}

const char *pt_st_key_name(lua_State *L, const pt_kv *k) {
  pt_st_push_kv(L, k);
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *s = lua_pushfstring(L, "'%s'", lua_tostring(L, -1));
    lua_remove(L, -2);
    return s;
  }
  if (lua_type(L, -1) == LUA_TBOOLEAN) {
    const char *s = lua_toboolean(L, -1) ? "true" : "false";
    lua_pop(L, 1);
    lua_pushstring(L, s);
  }
  return lua_tostring(L, -1);
}

void pt_st_store_unlocked(lua_State *L, pt_kv *v) {
  pt_ht_unprepare(v);
  pt_st_raise_lock(L);
  abort();                                   /* not reached: it raises */
}

/* A full arena: collect once (garbage handles may hold the room) and try
   again. */
void pt_st_store_at(lua_State *L, pt_stab *t, const pt_kv *k, pt_kv *v, pt_slot *sl, long ins) {
  pt_garbage g;
  int r = pt_ht_store_at(t, k, v, &g, sl, ins);
  pt_ht_unlock(t);
  if (g.n) pt_ht_garbage_drop(&g);
  if (r == 0) return;
  pt_st_collect(L);
  if (pt_st_lock(t) != 0) pt_st_store_unlocked(L, v);
  r = pt_ht_store(t, k, v, &g);
  pt_ht_unlock(t);
  if (g.n) pt_ht_garbage_drop(&g);
  if (r == 0) return;
  pt_ht_unprepare(v);
  pt_st_raise_full(L);
}

/* visited: plain table -> true while being copied, its handle once copied
   (shared parts stay shared; a cycle is an error, since counted references
   could never free it). */
pt_off pt_st_copy_plain(lua_State *L, int idx, int depth, int visited) {
  pt_off off;
  pt_stab *t;
  int top;
  if (depth > PT_CODEC_MAXDEPTH) pt_st_store_error(L, "cannot store a table nested deeper than %d", PT_CODEC_MAXDEPTH);
  luaL_checkstack(L, 8, "shared table copy");
  if (lua_getmetatable(L, idx)) {                           /* a pool, a future: the codec's rule */
    const char *no = pt_nocopy_name(L);
    if (no) pt_st_store_error(L, "cannot store a %s in a shared table", no);
    lua_pop(L, 1);
  }
  lua_pushvalue(L, idx);
  lua_rawget(L, visited);                                   /* L: ... seen */
  if (lua_isuserdata(L, -1)) return pt_shm_handle_off(lua_touserdata(L, -1));
  if (lua_toboolean(L, -1)) pt_st_store_error(L, "cannot store a table that contains itself (a cycle)");
  lua_pop(L, 1);
  if (!(off = pt_st_push_new(L))) {                         /* L: ... h */
    if (errno == ENOMEM) pt_st_raise_full(L);
    pt_st_raise_lock(L);
  }
  t = PT_HT(off);
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, visited);
  top = lua_gettop(L);
  lua_pushnil(L);                                           /* L: ... h nil */
  while (lua_next(L, idx)) {                                /* L: ... h k v */
    pt_kv k, v;
    int vis = visited;
    pt_st_tokey(L, -2, &k);
    pt_st_tovalue(L, -1, &v, depth, &vis);       /* may push a handle */
    pt_st_store(L, t, &k, &v);
    lua_settop(L, top + 1);                                 /* L: ... h k */
  }
  lua_pushvalue(L, idx);
  lua_pushvalue(L, top);
  lua_rawset(L, visited);                                   /* visited[plain] = h */
  return off;
}

/* The handles made while copying hold counts that nothing needs any more
   (each new table is held by its parent's slot): drop them now rather than
   whenever the collector runs, so that a process killed later does not
   take them with it. */
void pt_st_release_visited(lua_State *L, int visited, const pt_shm_handle *keep) {
  if (!visited) return;
  lua_pushnil(L);
  while (lua_next(L, visited)) {
    pt_shm_handle *h = pt_st_tohandle(L, -1);
    if (h && h != keep) pt_shm_release(h);
    lua_pop(L, 1);
  }
}

/* ---- reading ---------------------------------------------------------------------- */

void pt_st_reader_grow(lua_State *L, pt_st_reader *r) {
  if (r->need_tab && !r->blank) {
    r->blank = pt_st_push_blank(L);
    r->blank_idx = lua_gettop(L);
  }
  if (r->need_len > r->bufsz) {
    r->buf = lua_newuserdata(L, r->need_len);
    r->bufsz = r->need_len;
  }
}

/* A value that needs room made (a long string, a table): the reader. */
void pt_st_get_room(lua_State *L, pt_stab *t, const pt_kv *k) {
  pt_st_reader r;
  pt_st_reader_init(L, &r);
  for (;;) {
    pt_slot *sl;
    pt_kv v;
    if (pt_st_lock(t) != 0) pt_st_raise_lock(L);
    if (!(sl = pt_ht_find(t, k, NULL))) {
      pt_ht_unlock(t);
      pt_st_reader_push(L, &r, NULL);
      return;
    }
    if (!pt_st_reader_load(&r, sl, &v)) {
      pt_ht_unlock(t);
      pt_st_reader_grow(L, &r);
      continue;
    }
    pt_ht_unlock(t);
    pt_st_reader_push(L, &r, &v);
    return;
  }
}
