/* table_value.h - shared tables seen from Lua, below their functions
 * (table.c): handles, Lua values to and from the table's keys and values,
 * and the reader that fetches a value under the lock without calling Lua. */
#ifndef PT_TABLE_VALUE_H
#define PT_TABLE_VALUE_H

#include "pt.h"
#include "htab.h"
#include "handle.h"

#define PT_ST_TNAME "procthread.SharedTable"
#define PT_ST_FREED_MSG "shared table has been freed (a count on it was dropped " \
  "too often; its memory may hold something else now)"

/* ---- handles ---------------------------------------------------------- */
/* The shared table handle at i, or NULL when it is none: the toolkit's
   check by metatable (handle.h), whose key for tables is their codec type;
   fast from the functions pt_open_table made. */
#define PT_ST_KEY ((const void *)&pt_xtype_table)
static inline pt_shm_handle *pt_st_tohandle(lua_State *L, int i) {
  return (pt_shm_handle *)pt_udata_test(L, i, PT_ST_KEY, PT_ST_TNAME);
}
/* Raise: the argument i is no shared table; its handle (off) is released;
   its table has been freed. */
__attribute__((cold, noreturn)) void pt_st_raise_bad(lua_State *L, int i, pt_off off, int is_handle);
/* The live table of a handle: raises when it is released or when the
   table was freed under it (its generation is gone: never touch it). */
static inline pt_stab *pt_st_handle_tab(lua_State *L, const pt_shm_handle *h, int i) {
  pt_off off = pt_shm_handle_off(h);
  if (!off || !pt_ht_live(off, h->gen)) pt_st_raise_bad(L, i, off, 1);
  return PT_HT(off);
}
/* The live table at i; raises when it is none. */
static inline pt_stab *pt_st_check(lua_State *L, int i) {
  pt_shm_handle *h = pt_st_tohandle(L, i);
  if (!h) pt_st_raise_bad(L, i, 0, 0);
  return pt_st_handle_tab(L, h, i);
}
/* The same for argument 1 of a metamethod made by pt_meta_open (upvalue 3
   is the kind's pt_seen, handle.h): the remembered userdata is compared
   without first checking that upvalue 2 is the kind's key, which it
   always is there.  (Both remembered ones: compared with the array
   s->last itself, as it was once pt_seen held two, it never hit, and every
   get and set paid pt_st_check's three more lua_touserdata calls.)  Not
   left out though Lua calls these metamethods only on handles: the debug
   library may call them on anything, and they raise then (handle_spec). */
static inline pt_stab *pt_st_self(lua_State *L) {
  void *p = lua_touserdata(L, 1);
  const pt_seen *s = (const pt_seen *)lua_touserdata(L, lua_upvalueindex(3));
  if (p && s && (p == s->last[0] || p == s->last[1])) return pt_st_handle_tab(L, (const pt_shm_handle *)p, 1);
  return pt_st_check(L, 1);
}
/* A handle that holds nothing yet (so that creating it, which may raise,
   happens before a count is taken). */
pt_shm_handle *pt_st_push_blank(lua_State *L);
/* h takes over a count already held on the table at off. */
void pt_st_adopt(pt_shm_handle *h, pt_off off);
/* A new table's handle pushed, or 0 with errno (ENOMEM: the arena is full
   even after a collection, so that garbage handles freed what they held). */
pt_off pt_st_push_new(lua_State *L);

/* ---- errors ------------------------------------------------------------ */
/* Before saying the arena is full: handles that are garbage but not yet
   collected may hold the space needed (the collector cannot see arena
   bytes), so collect this state once and let the caller try again. */
void pt_st_collect(lua_State *L);
int pt_st_raise_full(lua_State *L);       /* "<opname>: shared memory exhausted ..." */
const char *pt_st_opname(lua_State *L);  /* the storing function running (table.c) */
/* The table's lock, with cancellation and (the main thread) Ctrl-C asked
   while waiting (0, or -1 errno ECANCELED: pt_st_stop_waiting said so). */
int pt_st_stop_waiting(void);
/* The wait for a busy lock: a futex wait on the lock word beside the
   cancel flag and the interrupt word (pt_lock_wait), no timer.  r: what
   the first trylock said; past the deadline (PT_FOREVER: none), -1 errno
   ETIMEDOUT. */
int pt_st_lock_slow(pt_stab *t, int r, double deadline);
static inline int pt_st_lock_until(pt_stab *t, double deadline) {
  int r = pthread_mutex_trylock(&t->mu);   /* also takes it again when ours */
  return r == 0 ? 0 : pt_st_lock_slow(t, r, deadline);
}
static inline int pt_st_lock(pt_stab *t) { return pt_st_lock_until(t, PT_FOREVER); }
/* A lock failure (errno): a cancellation raises "cancelled" (a Ctrl-C:
   pt_st_raise_lock raises "interrupted", pt_st_lock_error returns nil,
   "interrupted" and the interpreter's hook raises back in Lua); anything else
   raises "shared table lock: <strerror>" (metamethods, which cannot return
   an error) or returns nil, that, errno (pt_st_lock_error). */
int pt_st_raise_lock(lua_State *L);
int pt_st_lock_error(lua_State *L);

/* ---- values ------------------------------------------------------------ */
/* The Lua value at i as a key (hashed), as a value to store (prepared:
   what it needs in the arena is taken, and a plain table is copied into a
   new shared table whose handle is left on the stack; depth and *visited
   serve that copy, visited: 0 or the stack index of its visited table), or
   as a value to compare with (nothing is taken).  One conversion (tokv in
   table_value.c) serves the three.  Raises on a value that cannot be one;
   nothing is taken then. */
enum { PT_AS_KEY, PT_AS_VALUE, PT_AS_EXPECTED };
/* The conversions themselves; type is lua_type(L, i).  pt_st_tokey and
   pt_st_tovalue below take an integer inline on 5.3+ (no call, no general
   switch; a value without lua_type either), pt_st_tokey a string too, the
   rest go to these. */
void pt_st_tokey_of(lua_State *L, int i, pt_kv *k, int type);
void pt_st_tovalue_of(lua_State *L, int i, pt_kv *v, int depth, int *visited);
static inline void pt_st_tokey(lua_State *L, int i, pt_kv *k) {
  int type = lua_type(L, i);
#if LUA_VERSION_NUM >= 503
  if (type == LUA_TNUMBER) {                 /* an integral float is that */
    int isint;                               /* integer key, as in Lua */
    lua_Integer n = lua_tointegerx(L, i, &isint);
    if (isint) { pt_ht_int_key(k, (uint64_t)n); return; }
  }
#endif
  if (type == LUA_TSTRING) {                 /* tokv's own, without its call */
    size_t len;                              /* and its switches */
    const char *s = lua_tolstring(L, i, &len);
    pt_ht_string_key(k, s, len);
    return;
  }
  pt_st_tokey_of(L, i, k, type);
}
/* The same for a function's argument i: a bad key is a bad argument
   (the message names the function). */
void pt_st_argkey(lua_State *L, int i, pt_kv *k);
static inline void pt_st_tovalue(lua_State *L, int i, pt_kv *v, int depth, int *visited) {
#if LUA_VERSION_NUM >= 503
  if (lua_isinteger(L, i)) {
    pt_ht_int_value(v, (uint64_t)lua_tointeger(L, i));
    return;
  }
#endif
  pt_st_tovalue_of(L, i, v, depth, visited);
}
void pt_st_toexpected(lua_State *L, int i, pt_kv *e);
/* table.c: the name a value error raised in library function f carries
   ("cas", "shared_table"), or NULL (a metamethod: st.k = v). */
const char *pt_st_fn_name(lua_CFunction f);
void pt_st_store_error(lua_State *L, const char *fmt, ...);
/* The number at i (its type checked by the caller) as a value. */
void pt_st_tonumber(lua_State *L, int i, pt_kv *n);
/* Push a key or a value that is no table. */
void pt_st_push_kv(lua_State *L, const pt_kv *v);
/* A printable name for a key, for error messages (pushed on the stack). */
const char *pt_st_key_name(lua_State *L, const pt_kv *k);
/* t[k] = prepared v; raises when the arena is full (v is then dropped).
   No prefetch (see pt_st_get).  Inline, the common case: a value that
   owns nothing replaced by another value, no garbage, no arena call. */
__attribute__((cold, noreturn)) void pt_st_store_unlocked(lua_State *L, pt_kv *v);
/* Holding t's lock, what pt_ht_find(t, k, &ins) said: the rest of a store
   (the lock released on return). */
void pt_st_store_at(lua_State *L, pt_stab *t, const pt_kv *k, pt_kv *v, pt_slot *sl, long ins);
static inline void pt_st_store(lua_State *L, pt_stab *t, const pt_kv *k, pt_kv *v) {
  pt_slot *sl;
  long ins = -1;
  if (pt_st_lock(t) != 0) pt_st_store_unlocked(L, v);
  sl = pt_ht_find(t, k, NULL);               /* the lookup alone first: the */
  if (sl && v->t != PT_V_NIL && pt_ht_slot_plain(sl)) {   /* common case */
    pt_ht_changing(t);
    pt_ht_slot_set(sl, v);
    pt_ht_unlock(t);
    return;
  }
  if (!sl) pt_ht_find(t, k, &ins);           /* where to insert it */
  pt_st_store_at(L, t, k, v, sl, ins);
}
/* Copy the plain table at idx into a new shared table, whose handle is
   pushed; returns its offset. */
pt_off pt_st_copy_plain(lua_State *L, int idx, int depth, int visited);
/* Once a copy is stored, drop the counts of the handles made while
   copying (see table_value.c); keep: a handle to leave alone, or NULL. */
void pt_st_release_visited(lua_State *L, int visited, const pt_shm_handle *keep);

/* ---- reading ----------------------------------------------------------- */
/* Reading a value must not call Lua while the lock is held (an error would
   leave it held), so the room a value needs is made beforehand: a stack
   buffer for short strings, a Lua userdata for long ones, a blank handle
   for a table.  When the value found does not fit, the reader releases the
   lock, makes room (which may raise: nothing is held then) and reads
   again. */
typedef struct pt_st_reader {
  int base;                                  /* stack top on entry */
  pt_shm_handle *blank;
  int blank_idx;                             /* its stack index */
  char small[256];
  char *buf;
  size_t bufsz;
  int need_tab;
  size_t need_len;
} pt_st_reader;

static inline void pt_st_reader_init(lua_State *L, pt_st_reader *r) {
  r->base = lua_gettop(L);
  r->blank = NULL;
  r->blank_idx = 0;
  r->buf = r->small;
  r->bufsz = sizeof r->small;
  r->need_tab = 0;
  r->need_len = 0;
}

/* Under the lock: read the value in sl into v (strings into r's buffer; a
   table gets a count, adopted by pt_st_reader_push).  0 when it does not
   fit: release the lock, pt_st_reader_grow, and read again. */
static inline int pt_st_reader_load(pt_st_reader *r, const pt_slot *sl, pt_kv *v) {
  pt_ht_slot_value(sl, v);
  if (v->t == PT_V_TAB) {
    if (!r->blank) { r->need_tab = 1; return 0; }
    pt_ht_incref(v->bits);
  } else if (v->t == PT_V_LSTR) {
    if (v->len > r->bufsz) { r->need_len = v->len; return 0; }
    memcpy(r->buf, v->s, v->len);
    v->s = r->buf;
  }
  return 1;
}

void pt_st_reader_grow(lua_State *L, pt_st_reader *r);
/* Lock released: leave v (nil when v is NULL) as the only value above the
   entry top. */
static inline void pt_st_reader_push(lua_State *L, pt_st_reader *r, const pt_kv *v) {
  if (v && v->t == PT_V_TAB) {
    pt_st_adopt(r->blank, v->bits);
    lua_pushvalue(L, r->blank_idx);
  } else if (v) {
    pt_st_push_kv(L, v);
  } else {
    lua_pushnil(L);
  }
  if (lua_gettop(L) > r->base + 1) {
    lua_replace(L, r->base + 1);
    lua_settop(L, r->base + 1);
  }
}

/* Push t[k] (nil when absent); raises on a lock failure.  Callers that
   can, prefetch k's slot first (pt_ht_prefetch), as early as they can.
   Inline for a value that needs no room made (pt_st_reader); the others
   are read again by pt_st_get_room. */
void pt_st_get_room(lua_State *L, pt_stab *t, const pt_kv *k);
static inline void pt_st_get(lua_State *L, pt_stab *t, const pt_kv *k) {
  pt_slot *sl;
  pt_kv v;
  if (!pt_ht_get_free(t, k, &v)) {           /* the lock was busy, or the value */
    if (pt_st_lock(t) != 0) pt_st_raise_lock(L);   /* changed, or needs room */
    if (!(sl = pt_ht_find(t, k, NULL))) {
      pt_ht_unlock(t);
      lua_pushnil(L);
      return;
    }
    pt_ht_slot_value(sl, &v);
    pt_ht_unlock(t);
    if (v.t == PT_V_LSTR || v.t == PT_V_TAB) { pt_st_get_room(L, t, k); return; }
  }
#if LUA_VERSION_NUM >= 503
  if (v.t == PT_V_INT) lua_pushinteger(L, (lua_Integer)(int64_t)v.bits);
  else
#endif
  pt_st_push_kv(L, &v);
}

#endif
