/* table.c - shared tables from Lua: pt.shared_table, the metamethods,
 * pt.pairs, pt.snapshot, pt.add, pt.cas, pt.locked, pt.wait, and the crossing of a
 * table between states (codec).
 *
 * The table itself (layout, crash safety) is htab.c, plain C; handles and
 * the conversion of values are table_value.c; the arena's own functions
 * (pt.configure, pt.shm_stats, pt.release) are arena_lua.c.
 *
 * Errors.  A mistake raises.  A lock failure (an OS error: the lock is
 * unusable) returns nil, "shared table lock: <strerror>", errno from the
 * functions (pt.add, pt.cas, pt.locked, pt.snapshot, pt.shared_table), and
 * raises from the metamethods (__index, __newindex, __len, __pairs) and
 * from pt.pairs and its iterator, which have no way to return one: a nil
 * from __index would read as an absent key.  A cancellation while waiting
 * for a lock raises "cancelled" everywhere.  A full arena raises.
 */
#include "table_value.h"
#include "arena_lua.h"
#include "handle.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DUMPNAME "procthread.SharedTable.dump"

/* ---- dumps: a copy of a table's entries, in a userdata ----------------------------- */

static const char dump_key;                  /* the toolkit's key for dumps */

static int dump_live(const void *p) { (void)p; return 0; }   /* never remembered */

static pt_ht_dump *todump(lua_State *L, int i) {
  return (pt_ht_dump *)pt_udata_test(L, i, &dump_key, DUMPNAME);
}

static int st_dump_gc(lua_State *L) {
  pt_ht_dump *d = todump(L, 1);
  if (d) pt_ht_dump_clear(d);
  return 0;
}

/* Push a dump of t: keys, and values too when `values`.  NULL with errno
   on a lock failure (the dump is pushed, empty); raises when out of
   memory (nothing is taken then). */
static pt_ht_dump *push_dump(lua_State *L, pt_stab *t, int values) {
  pt_ht_dump *d = pt_newuserdata(L, sizeof(pt_ht_dump));
  int r;
  memset(d, 0, sizeof *d);
  luaL_getmetatable(L, DUMPNAME);
  lua_setmetatable(L, -2);
  if (pt_st_lock(t) != 0) return NULL;
  r = pt_ht_dump_take(t, values, d);
  pt_ht_unlock(t);
  if (r != 0) luaL_error(L, "not enough memory");
  return d;
}

/* ---- pairs ------------------------------------------------------------------------- */

/* Iterate over the keys present when iteration began, each at most once,
   with its value at the time it is visited (keys removed since are
   skipped).  The state is a plain table {handle, dump}, not upvalues of a
   fresh closure: LuaJIT's traces keep the closures they call alive, which
   would keep the shared table alive with them. */
static int st_pairs_iter(lua_State *L) {
  pt_shm_handle *h;
  pt_ht_dump *d;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_rawgeti(L, 1, 1);
  lua_rawgeti(L, 1, 2);                                     /* L: state h dump */
  h = pt_st_tohandle(L, 2);
  d = todump(L, 3);
  if (!h || !d) return luaL_argerror(L, 1, "not a shared table iteration");
  if (!pt_shm_handle_off(h)) return luaL_error(L, "shared table is released");
  while (d->pos < d->n) {
    pt_ht_entry *e = &d->e[d->pos++];
    pt_st_push_kv(L, &e->k);
    pt_st_get(L, pt_st_handle_tab(L, h, 1), &e->k);
    if (!lua_isnil(L, -1)) return 2;
    lua_pop(L, 2);
  }
  lua_pushnil(L);
  return 1;
}

static int st_pairs(lua_State *L) {
  pt_stab *t = pt_st_check(L, 1);
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));     /* the iterator's check fast too: */
  lua_pushvalue(L, lua_upvalueindex(2));     /* st_pairs's upvalues (handle.h) */
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_pushcclosure(L, st_pairs_iter, 3);
  lua_createtable(L, 2, 0);                                 /* L: st iter state */
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  if (!push_dump(L, t, 0)) pt_st_raise_lock(L);
  lua_rawseti(L, -2, 2);
  lua_pushnil(L);
  return 3;
}

/* ---- snapshot --------------------------------------------------------------------- */

/* Push a plain copy of the table at off; 0, or -1 with errno on a lock
   failure (something else pushed then). */
static int snapshot(lua_State *L, pt_off off, int visited, int depth) {
  pt_ht_dump *d;
  size_t i;
  int tbl;
  luaL_checkstack(L, 8, "snapshot");
  lua_pushinteger(L, (lua_Integer)off);
  lua_rawget(L, visited);
  if (!lua_isnil(L, -1)) return 0;           /* shared part or cycle */
  lua_pop(L, 1);
  if (depth > PT_CODEC_MAXDEPTH) luaL_error(L, "snapshot: tables nested deeper than %d", PT_CODEC_MAXDEPTH);
  if (!(d = push_dump(L, PT_HT(off), 1))) return -1;         /* L: dump */
  lua_createtable(L, 0, (int)(d->n > 1000000 ? 1000000 : d->n));   /* L: dump t */
  lua_pushinteger(L, (lua_Integer)off);
  lua_pushvalue(L, -2);
  lua_rawset(L, visited);
  tbl = lua_gettop(L);
  for (i = 0; i < d->n; i++) {
    pt_ht_entry *e = &d->e[i];
    pt_st_push_kv(L, &e->k);                                 /* L: dump t k */
    if (e->v.t != PT_V_TAB) pt_st_push_kv(L, &e->v);         /* L: dump t k v */
    else if (snapshot(L, e->v.bits, visited, depth + 1) != 0) return -1;
    lua_rawset(L, tbl);
  }
  pt_ht_dump_clear(d);
  lua_remove(L, tbl - 1);                                    /* L: t */
  return 0;
}

/* pt.snapshot(st) -> plain table | nil, err, errno */
static int st_snapshot(lua_State *L) {
  pt_off off = pt_ht_off(pt_st_check(L, 1));
  lua_settop(L, 1);
  lua_newtable(L);                                           /* L: st visited */
  if (snapshot(L, off, 2, 0) != 0) return pt_st_lock_error(L);
  return 1;
}

/* ---- atomic operations ------------------------------------------------------------- */

static const char *const vnames[] = {"nil", "boolean", "boolean", "number", "number",
                                     "string", "string", "shared table"};

/* cur + the number d (an integer di when isint): the result into v, or 0
   when cur is no number. */
static int add_to(const pt_kv *cur, int isint, int64_t di, double d, pt_kv *v) {
  double a, r;
  v->s = NULL;
  v->len = 0;
  if (cur->t == PT_V_INT && isint) {
    v->t = PT_V_INT;
    v->bits = cur->bits + (uint64_t)di;      /* wraps around like Lua */
    return 1;
  }
  if (cur->t == PT_V_INT) a = (double)(int64_t)cur->bits;
  else if (cur->t == PT_V_FLT) memcpy(&a, &cur->bits, 8);
  else return 0;
  r = a + d;
  v->t = PT_V_FLT;
  memcpy(&v->bits, &r, 8);
  return 1;
}

/* pt.add(st, k, n) -> the new value | nil, err, errno */
static int add_impl(lua_State *L, int may_collect) {
  pt_stab *t = pt_st_check(L, 1);
  pt_kv k, n, v;
  pt_slot *sl;
  pt_st_argkey(L, 2, &k);
  if (lua_type(L, 3) != LUA_TNUMBER)
    return luaL_argerror(L, 3, lua_pushfstring(L, "number expected, got %s", luaL_typename(L, 3)));
  pt_st_tonumber(L, 3, &n);
  pt_ht_prefetch(t, &k);
  if (pt_st_lock(t) != 0) return pt_st_lock_error(L);
  if ((sl = pt_ht_find(t, &k, NULL)) != NULL) {
    pt_kv cur;
    double d;
    memcpy(&d, &n.bits, 8);
    pt_ht_slot_value(sl, &cur);
    if (!add_to(&cur, n.t == PT_V_INT, (int64_t)n.bits,
                n.t == PT_V_INT ? (double)(int64_t)n.bits : d, &v)) {
      pt_ht_unlock(t);
      return luaL_error(L, "pt.add: the value at key %s is a %s, not a number",
                        pt_st_key_name(L, &k), vnames[cur.t]);
    }
    pt_ht_changing(t);
    pt_ht_slot_set(sl, &v);
    pt_ht_unlock(t);
  } else {
    pt_garbage g;
    int r;
    v = n;
    r = pt_ht_store(t, &k, &v, &g);
    pt_ht_unlock(t);
    if (r != 0) {
      if (!may_collect) return pt_st_raise_full(L);
      pt_st_collect(L);
      return add_impl(L, 0);
    }
  }
  pt_st_push_kv(L, &v);
  return 1;
}

static int st_add(lua_State *L) { return add_impl(L, 1); }

/* pt.cas(st, k, expected, new) -> true | false, current | nil, err, errno */
static int cas_impl(lua_State *L, int may_collect) {
  pt_stab *t = pt_st_check(L, 1);
  pt_kv k, e, v;
  pt_st_reader r;
  luaL_checkany(L, 3);
  lua_settop(L, 4);
  pt_st_argkey(L, 2, &k);
  pt_st_toexpected(L, 3, &e);
  pt_st_reader_init(L, &r);                                 /* L: st k e new */
  for (;;) {
    pt_slot *sl;
    pt_kv cur;
    int visited = 0;
    pt_st_tovalue(L, 4, &v, 0, &visited);
    if (pt_st_lock(t) != 0) { pt_ht_unprepare(&v); return pt_st_lock_error(L); }
    sl = pt_ht_find(t, &k, NULL);
    if (pt_ht_slot_equals(sl, &e)) {
      pt_garbage g;
      int rs = pt_ht_store(t, &k, &v, &g);
      pt_ht_unlock(t);
      pt_ht_garbage_drop(&g);
      if (rs != 0) {
        pt_ht_unprepare(&v);
        if (!may_collect) return pt_st_raise_full(L);
        pt_st_collect(L);
        lua_settop(L, 4);
        return cas_impl(L, 0);
      }
      pt_st_release_visited(L, visited, NULL);
      lua_pushboolean(L, 1);
      return 1;
    }
    if (sl && !pt_st_reader_load(&r, sl, &cur)) {
      pt_ht_unlock(t);
      pt_ht_unprepare(&v);                   /* made again on the next try */
      pt_st_reader_grow(L, &r);
      continue;
    }
    pt_ht_unlock(t);
    pt_ht_unprepare(&v);
    pt_st_reader_push(L, &r, sl ? &cur : NULL);             /* L: st k e new cur */
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
}

static int st_cas(lua_State *L) { return cas_impl(L, 1); }

static int st_new(lua_State *L);
const char *pt_st_fn_name(lua_CFunction f) {
  return f == st_cas ? "cas" : f == st_new ? "shared_table" : NULL;
}

/* pt.locked(st, fn, ...) -> the results of fn(st, ...), run holding st's
   lock | nil, err, errno (the lock failed: fn did not run); an error
   (cancellation included) releases it and propagates. */
static int st_locked(lua_State *L) {
  pt_stab *t = pt_st_check(L, 1);
  int n = lua_gettop(L), i, r;
  pt_off off = pt_ht_off(t);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checkstack(L, n + LUA_MINSTACK, "pt.locked");
  if (pt_st_lock(t) != 0) return pt_st_lock_error(L);  /* a cancellation point */
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  for (i = 3; i <= n; i++) lua_pushvalue(L, i);            /* L: st fn ... fn st ... */
  pt_ht_incref(off);                         /* fn may release its handle */
  r = lua_pcall(L, n - 1, LUA_MULTRET, 0);
  pt_ht_unlock(t);
  pt_ht_decref(off);
  if (r != 0) return lua_error(L);
  return lua_gettop(L) - n;
}

/* ---- pt.wait ------------------------------------------------------------------------ */

static void st_repair(void *t) { pt_ht_recover(t); }

/* The status of a failed pt_st_lock_until (errno). */
static int lock_status(void) {
  return errno == ETIMEDOUT ? PT_TIMEOUT : errno == ECANCELED ? PT_CANCELLED : PT_ERR;
}

/* Holding t's lock (any number of times): sleep until t[k] is no longer
   equal to e.  Every change wakes t->waiters under the lock before it
   publishes (pt_ht_changing), and the sleep begins only once the value was
   seen under the lock, so no change is missed.  What the value says when a
   sleep ends wins over a timeout or a cancel.  Inside pt.locked the lock
   is taken back whatever ends the wait (the caller's fn relies on it, as
   with pthread_cond_wait); held once (pt.wait's own), taking it back keeps
   the deadline, the cancel and Ctrl-C, and *held says whether it is held
   on return.  PT_OK, PT_TIMEOUT, PT_CANCELLED (cancelled, or Ctrl-C:
   pt_raise_cancelled tells), PT_ERR. */
static int wait_change(pt_stab *t, const pt_kv *k, const pt_kv *e, double deadline, int *held) {
  pt_wake w;
  int r = PT_OK, depth;
  w.cancel = pt_cancel_flag();
  w.intr_expected = 0;
  while (pt_ht_slot_equals(pt_ht_find(t, k, NULL), e)) {
    if (r != PT_OK) return r;
    if (deadline >= 0 && pt_clock_now() >= deadline) return PT_TIMEOUT;
    if (pt_interrupted()) return PT_CANCELLED;
    w.intr = pt_interrupt_word(&w.intr_expected);
    r = pt_cond_wait_all(&t->waiters, &t->mu, deadline, &w, &depth);
    if (r == PT_INTR) r = PT_OK;             /* a signal: pt_interrupted() tells */
    if (depth > 1) pt_cond_relock(&t->mu, depth, st_repair, t);
    else if (pt_st_lock_until(t, deadline) != 0) { *held = 0; return lock_status(); }
  }
  return PT_OK;
}

/* pt.wait(st, k, value [, timeout]) -> true | nil, "timeout" |
   nil, "interrupted"; raises "cancelled".  The timeout covers the waits
   for the table's lock too. */
static int st_wait(lua_State *L) {
  pt_stab *t = pt_st_check(L, 1);
  pt_kv k, e;
  double deadline;
  int r, err, held = 1;
  pt_st_argkey(L, 2, &k);
  luaL_checkany(L, 3);
  pt_st_toexpected(L, 3, &e);
  deadline = pt_check_deadline(L, 4, 1, "wait");
  if (pt_st_lock_until(t, deadline) != 0) {
    if (errno != ETIMEDOUT) return pt_st_lock_error(L);
    r = PT_TIMEOUT;
    held = 0;
  } else {
    r = wait_change(t, &k, &e, deadline, &held);
  }
  err = errno;
  if (held) pt_ht_unlock(t);
  if (r == PT_OK) { lua_pushboolean(L, 1); return 1; }
  return pt_push_status(L, r, "pt.wait", err);
}

/* ---- the metamethods -------------------------------------------------------------- */

/* The slot is fetched from the moment the key is known: the value's
   conversion and the lock's two locked instructions run meanwhile. */
static int st_index(lua_State *L) {
  pt_stab *t = pt_st_self(L);
  pt_kv k;
  pt_st_tokey(L, 2, &k);
  pt_ht_prefetch(t, &k);
  pt_st_get(L, t, &k);
  return 1;
}

static int st_newindex(lua_State *L) {
  pt_stab *t = pt_st_self(L);
  pt_kv k, v;
  int visited = 0;
  pt_st_tokey(L, 2, &k);
  pt_ht_prefetch(t, &k);
  pt_st_tovalue(L, 3, &v, 0, &visited);
  pt_st_store(L, t, &k, &v);
  if (visited) pt_st_release_visited(L, visited, NULL);
  return 0;
}

static int st_len(lua_State *L) {
  pt_stab *t = pt_st_check(L, 1);
  int64_t n;
  if (pt_st_lock(t) != 0) pt_st_raise_lock(L);
  /* where numbers are doubles, n + 1 must be another key: below 2^53 */
  n = pt_ht_border(t, LUA_VERSION_NUM >= 503 ? INT64_MAX : (int64_t)1 << 53);
  pt_ht_unlock(t);
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

static int st_live(const void *p) { return pt_shm_handle_off(p) != 0; }

static int st_gc(lua_State *L) {
  pt_shm_handle *h = pt_st_tohandle(L, 1);
  if (h) pt_shm_release(h);
  return 0;
}

static int st_eq(lua_State *L) {
  pt_shm_handle *a = pt_st_tohandle(L, 1), *b = pt_st_tohandle(L, 2);
  pt_off x = a ? pt_shm_handle_off(a) : 0;
  lua_pushboolean(L, x && b && x == pt_shm_handle_off(b) && a->gen == b->gen);
  return 1;
}

static int st_tostring(lua_State *L) {
  pt_shm_handle *h = pt_st_tohandle(L, 1);
  pt_off off = h ? pt_shm_handle_off(h) : 0;
  if (off && !pt_ht_live(off, h->gen)) lua_pushstring(L, PT_ST_TNAME " (freed)");
  else if (off) lua_pushfstring(L, PT_ST_TNAME ": %p", (void *)(uintptr_t)off);
  else lua_pushstring(L, PT_ST_TNAME " (released)");
  return 1;
}

/* ---- pt.shared_table -------------------------------------------------------------- */

/* pt.shared_table([init]) -> st | nil, err, errno */
static int st_new(lua_State *L) {
  int visited = 0;
  if (!lua_isnoneornil(L, 1) && !lua_istable(L, 1))
    return luaL_argerror(L, 1, lua_pushfstring(L, "table or nil expected, got %s",
                                               luaL_typename(L, 1)));
  lua_settop(L, 1);
  if (pt_shm_ensure() != 0) return pt_push_shm_error(L, errno);
  if (lua_istable(L, 1)) {
    lua_newtable(L);
    visited = 2;
    pt_st_copy_plain(L, 1, 0, visited);                    /* L: init visited h */
    pt_st_release_visited(L, visited, pt_st_tohandle(L, 3));
    lua_settop(L, 3);
    return 1;
  }
  if (pt_st_push_new(L)) return 1;
  if (errno == ENOMEM) return pt_st_raise_full(L);
  return pt_st_lock_error(L);
}

/* The name of the procthread function running in L (a full arena's error
   starts with it): found from the call stack, so the conversions deep in a
   store need not carry it. */
const char *pt_st_opname(lua_State *L) {
  static const struct { lua_CFunction f; const char *name; } ops[] = {
    {st_add, "pt.add"}, {st_cas, "pt.cas"}, {st_new, "pt.shared_table"},
    {st_newindex, "shared table assignment"}};
  lua_Debug ar;
  lua_CFunction f = NULL;
  size_t i;
  if (lua_getstack(L, 0, &ar) && lua_getinfo(L, "f", &ar)) {
    f = lua_tocfunction(L, -1);
    lua_pop(L, 1);
  }
  for (i = 0; i < sizeof ops / sizeof ops[0]; i++)
    if (ops[i].f == f) return ops[i].name;
  return "shared table";
}

static int st_pt_pairs(lua_State *L) {
  pt_st_check(L, 1);
  return st_pairs(L);
}

/* ---- for pt.release and pt._shm_release (arena_lua.c) ----------------------------- */

static int st_release(lua_State *L, int idx) {
  pt_shm_handle *h = pt_st_tohandle(L, idx);
  if (!h) return 0;
  pt_shm_release(h);
  return 1;
}

static int st_drop_count(lua_State *L, int idx) {
  if (!pt_st_tohandle(L, idx)) return 0;
  pt_ht_decref(pt_ht_off(pt_st_check(L, idx)));
  return 1;
}

static const pt_shm_kind st_kind = {st_release, st_drop_count};

/* ---- crossing between states (codec) ---------------------------------------------------- */

/* A reference is the table's offset and generation. */
static const char *st_encode(lua_State *L, int idx, pt_ref *ref) {
  pt_shm_handle *h = pt_st_tohandle(L, idx);
  pt_off off = h ? pt_shm_handle_off(h) : 0;
  if (!h) return "not a shared table";
  if (!off) return "shared table is released";
  if (!pt_ht_live(off, h->gen)) return PT_ST_FREED_MSG;
  pt_ht_incref(off);
  ref->a = off;
  ref->b = h->gen;
  return NULL;
}

static void st_ref_release(const pt_ref *ref) {
  if (pt_ht_valid(ref->a, ref->b)) pt_ht_decref(ref->a);
}

static const char *st_decode(lua_State *L, const pt_ref *ref) {
  pt_shm_handle *h;
  if (!pt_ht_valid(ref->a, ref->b))
    return "corrupt message (bad shared table reference, or the table has been freed)";
  h = pt_st_push_blank(L);
  pt_st_adopt(h, ref->a);
  return NULL;
}

const pt_xtype pt_xtype_table = {PT_ST_TNAME, st_encode, st_ref_release, st_decode};

void pt_open_table(lua_State *L) {
  static const luaL_Reg meta[] = {
    {"__index", st_index}, {"__newindex", st_newindex}, {"__len", st_len},
    {"__gc", st_gc}, {"__eq", st_eq}, {"__tostring", st_tostring},
#if LUA_VERSION_NUM >= 502
    {"__pairs", st_pairs},
#endif
#if LUA_VERSION_NUM >= 504
    {"__close", st_gc},
#endif
    {NULL, NULL}};
  static const luaL_Reg fns[] = {
    {"shared_table", st_new}, {"add", st_add}, {"cas", st_cas},
    {"locked", st_locked}, {"snapshot", st_snapshot}, {"pairs", st_pt_pairs},
    {"wait", st_wait},
    {NULL, NULL}};
  static const luaL_Reg dump_meta[] = {{"__gc", st_dump_gc}, {NULL, NULL}};
  pt_open_arena(L);
  pt_shm_register_kind(PT_KIND_TABLE, &st_kind);
  pt_meta_open(L, PT_ST_TNAME, PT_ST_KEY, st_live, meta, NULL);
  pt_meta_open(L, DUMPNAME, &dump_key, dump_live, dump_meta, NULL);
  pt_class_methods(L, PT_ST_TNAME, PT_ST_KEY, -1, fns);   /* their checks are fast */
}
