/* table.c - shared tables: hash tables that live in the shared arena.
 *
 * Layout (all in the arena, linked by offsets):
 *
 *   stab     the table: robust recursive lock, reference count, offset of
 *            its slot array, entry and tombstone counts
 *   slots    a power-of-two array of slots, open addressing with linear
 *            probing; the table's `slots` word holds its offset and its
 *            capacity, so one store publishes both
 *   slot     ctl word, hash, key, two value words
 *   lstr     a string longer than 8 bytes (strings up to 8 bytes are kept
 *            inside the slot)
 *
 * Every change is published by one aligned store, so a process killed at
 * any instant leaves each table as it was before or after the change:
 *
 *   insert   key and value are written into a slot whose ctl says EMPTY or
 *            TOMB (invisible to lookups); storing ctl = FULL publishes them
 *   update   the new value goes into the value word that is not current;
 *            storing ctl with the other `which` bit publishes it
 *   delete   storing ctl = TOMB
 *   grow     a complete new slot array is built aside; storing the table's
 *            slot offset publishes it
 *
 * Strings and tables that a change makes unreachable are freed after the
 * publishing store, and whatever a change needs (a string, a count on a
 * nested table) is taken before it: a kill in between can only leak, never
 * leave a reference to freed memory.  The counts (entries, tombstones)
 * follow the publishing store; the next locker of a lock whose owner died
 * (EOWNERDEAD) recounts them from the slots.
 */
#include "pt.h"
#include "shm.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TNAME "procthread.SharedTable"
#define DUMPNAME "procthread.SharedTable.dump"
#define ANAME "procthread.Array"
#define KIND_TABLE 1
#define TAB_MAGIC 0x74616231u                /* "tab1" */

enum { T_NIL, T_FALSE, T_TRUE, T_INT, T_FLT, T_SSTR, T_LSTR, T_TAB };
enum { S_EMPTY, S_FULL, S_TOMB };

#define C_STATE(c) ((c) & 3u)
#define C_WHICH(c) (((c) >> 2) & 1u)
#define C_VT(c) (((c) >> 3) & 15u)
#define C_VLEN(c) (((c) >> 7) & 15u)
#define C_KT(c) (((c) >> 11) & 15u)
#define C_KLEN(c) (((c) >> 15) & 15u)
#define MKCTL(st, w, vt, vl, kt, kl) \
  ((uint32_t)(st) | ((uint32_t)(w) << 2) | ((uint32_t)(vt) << 3) | \
   ((uint32_t)(vl) << 7) | ((uint32_t)(kt) << 11) | ((uint32_t)(kl) << 15))

typedef struct slot {
  uint32_t ctl, hash;
  uint64_t key;
  uint64_t val[2];
} slot;

/* The first cache line holds all an ordinary operation touches besides
   its slot: the lock, the slot array word and the counts. */
typedef struct stab {
  pthread_mutex_t mu;
  uint64_t slots;         /* offset of slot 0 (64-aligned) | log2(capacity) */
  uint64_t count, tombs;
  uint32_t magic, kind;
  uint64_t refs;
  uint64_t gen;           /* see pt_shm_new_gen; 0 once destroyed */
} stab;

#define SOFF(w) ((w) & ~63ULL)
#define SCAP(w) (1ULL << ((w) & 63))
#define SLOTS(t) PT_SHM_PTR(slot, SOFF((t)->slots))

typedef struct lstr {
  uint64_t len;
  char data[8];
} lstr;

/* A key or value on the C side.  bits: the integer, the double's bits, the
   inline string bytes, or an arena offset (long string, table). */
typedef struct kv {
  int t;
  uint64_t bits;
  const char *s;
  size_t len;
  uint32_t hash;
} kv;

#define TAB(off) PT_SHM_PTR(stab, off)
#define LSTR(off) PT_SHM_PTR(lstr, off)

/* ---- hashing -------------------------------------------------------------- */


/* The arena could not be mapped: nil, the arena's message, errno. */
int pt_push_shm_error(lua_State *L, int err) {
  lua_pushnil(L);
  lua_pushstring(L, pt_shm_errmsg());
  lua_pushinteger(L, err);
  return 3;
}

static uint32_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return (uint32_t)h;
}

/* Up to 8 bytes as a zero-padded little-endian word, without a memcpy call
   of variable length. */
static uint64_t load_small(const char *s, size_t n) {
  uint64_t w = 0;
  size_t i;
  if (n >= 4) {
    uint32_t a, b;
    memcpy(&a, s, 4);
    memcpy(&b, s + n - 4, 4);
    return (uint64_t)a | ((uint64_t)b << (8 * (n - 4)));
  }
  for (i = 0; i < n; i++) w |= (uint64_t)(unsigned char)s[i] << (8 * i);
  return w;
}

static uint32_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n, w;
  while (n > 8) {
    memcpy(&w, s, 8);
    h = (h ^ w) * 0x100000001b3ULL;
    h ^= h >> 29;
    s += 8; n -= 8;
  }
  return mix(h ^ load_small(s, n));
}

/* ---- table objects ---------------------------------------------------------- */

static void tab_decref(pt_off off);

static void drop_value(int t, uint64_t bits) {
  if (t == T_LSTR) pt_shm_free(bits);
  else if (t == T_TAB) tab_decref(bits);
}

/* Free a table whose count reached zero, and the tables that only it held,
   without recursion (the dead table's `count` field links the work list). */
static void tab_destroy(pt_off off) {
  pt_off list = off;
  TAB(off)->count = 0;
  while (list) {
    stab *t = TAB(list);
    pt_off next = t->count, me = list;
    if (t->slots) {
      slot *a = SLOTS(t);
      uint64_t i, cap = SCAP(t->slots);
      for (i = 0; i < cap; i++) {
        slot *sl = &a[i];
        uint32_t c = sl->ctl;
        if (C_STATE(c) != S_FULL) continue;
        if (C_KT(c) == T_LSTR) pt_shm_free(sl->key);
        if (C_VT(c) == T_LSTR) pt_shm_free(sl->val[C_WHICH(c)]);
        else if (C_VT(c) == T_TAB) {
          pt_off child = sl->val[C_WHICH(c)];
          if (pt_shm_decref(&TAB(child)->refs)) {
            TAB(child)->count = next;
            next = child;
          }
        }
      }
      pt_shm_free_aligned(SOFF(t->slots));
    }
    pt_shm_gen_kill(&t->gen);
    __atomic_store_n(&t->magic, 0, __ATOMIC_RELAXED);
    pthread_mutex_destroy(&t->mu);
    pt_shm_free_aligned(me);
    list = next;
  }
}

static void tab_decref(pt_off off) {
  if (off && pt_shm_mapped() && pt_shm_decref(&TAB(off)->refs)) tab_destroy(off);
}

/* Recount after a lock holder died: the slots are the truth. */
static void tab_repair(stab *t) {
  uint64_t i, n = 0, tb = 0;
  if (t->slots) {
    slot *a = SLOTS(t);
    uint64_t cap = SCAP(t->slots);
    for (i = 0; i < cap; i++) {
      unsigned s = C_STATE(a[i].ctl);
      if (s == S_FULL) n++;
      else if (s == S_TOMB) tb++;
    }
  }
  t->count = n;
  t->tombs = tb;
}

static inline int tab_lock(stab *t) {
  int r = pt_shm_mutex_trylock_spin(&t->mu);
  if (r == 1) {
    tab_repair(t);
    pt_shm_note_recovery();
    pt_shm_mutex_consistent(&t->mu);
    r = 0;
  }
  return r;
}

static void tab_unlock(stab *t) { pt_shm_mutex_unlock(&t->mu); }

/* Start fetching the slot a key hashes to while the lock is being taken
   (a hint only: the slot array may change before the lock is ours, and a
   prefetch never faults). */
static void tab_prefetch(stab *t, uint32_t hash) {
  uint64_t w = __atomic_load_n(&t->slots, __ATOMIC_RELAXED);
  if (w) __builtin_prefetch(PT_SHM_PTR(slot, SOFF(w)) + (hash & (SCAP(w) - 1)), 1);
}

/* A new empty table with one count, or 0 (errno: ENOMEM when the arena is
   full, else the mutex error). */
static pt_off tab_new(void) {
  pt_off off = pt_shm_alloc_aligned(sizeof(stab), 64);
  stab *t;
  if (!off) { errno = ENOMEM; return 0; }
  t = TAB(off);
  memset(t, 0, sizeof *t);
  if (pt_shm_mutex_init(&t->mu, 1) != 0) {
    int e = errno;
    pt_shm_free_aligned(off);
    errno = e;
    return 0;
  }
  t->kind = KIND_TABLE;
  t->refs = 1;
  t->magic = TAB_MAGIC;
  pt_shm_gen_publish(&t->gen, pt_shm_new_gen());
  return off;
}

/* ---- lookup and change (caller holds the lock) -------------------------------- */

static int key_eq(const slot *sl, uint32_t c, const kv *k) {
  if (sl->hash != k->hash || C_KT(c) != (unsigned)k->t) return 0;
  switch (k->t) {
    case T_FALSE: case T_TRUE: return 1;
    case T_INT: case T_FLT: return sl->key == k->bits;
    case T_SSTR: return C_KLEN(c) == k->len && sl->key == k->bits;
    case T_LSTR: {
      const lstr *ls = LSTR(sl->key);
      return ls->len == k->len && memcmp(ls->data, k->s, k->len) == 0;
    }
    default: return 0;
  }
}

/* Index of k's slot, or -1; *ins: where to insert it (-1: no room). */
static long tab_find(stab *t, const kv *k, long *ins) {
  slot *a;
  uint64_t w = t->slots, mask, i, n, cap;
  long tomb = -1;
  *ins = -1;
  if (!w) return -1;
  a = PT_SHM_PTR(slot, SOFF(w));
  cap = SCAP(w);
  mask = cap - 1;
  i = k->hash & mask;
  for (n = 0; n < cap; n++, i = (i + 1) & mask) {
    uint32_t c = a[i].ctl;
    unsigned st = C_STATE(c);
    if (st == S_EMPTY) {
      *ins = tomb >= 0 ? tomb : (long)i;
      return -1;
    }
    if (st == S_TOMB) {
      if (tomb < 0) tomb = (long)i;
      continue;
    }
    if (key_eq(&a[i], c, k)) return (long)i;
  }
  *ins = tomb;
  return -1;
}

/* Build a slot array of `cap` slots holding every entry and publish it.
   0 ok, -1 the arena is full (the table is unchanged). */
static int tab_rehash(stab *t, uint64_t cap) {
  pt_off noff = pt_shm_alloc_aligned((size_t)cap * sizeof(slot), 64);
  uint64_t old = t->slots, i, mask = cap - 1;
  slot *na;
  if (!noff) return -1;
  na = PT_SHM_PTR(slot, noff);
  memset(na, 0, (size_t)cap * sizeof(slot));
  if (old) {
    slot *a = PT_SHM_PTR(slot, SOFF(old));
    uint64_t ocap = SCAP(old);
    for (i = 0; i < ocap; i++) {
      uint64_t j;
      if (C_STATE(a[i].ctl) != S_FULL) continue;
      for (j = a[i].hash & mask; na[j].ctl; j = (j + 1) & mask) {}
      na[j] = a[i];
    }
  }
  __atomic_store_n(&t->slots, noff | (uint64_t)__builtin_ctzll(cap),
                   __ATOMIC_RELEASE);          /* publish */
  t->tombs = 0;
  if (old) pt_shm_free_aligned(SOFF(old));
  return 0;
}

static uint64_t cap_for(uint64_t n) {
  uint64_t cap = 8;
  while (cap < n * 2) cap <<= 1;
  return cap;
}

/* Things a change made unreachable, dropped once the lock is released. */
typedef struct garbage {
  int n;
  int t[3];
  uint64_t bits[3];
} garbage;

static void garbage_add(garbage *g, int t, uint64_t bits) {
  if (t == T_LSTR || t == T_TAB) { g->t[g->n] = t; g->bits[g->n] = bits; g->n++; }
}

static void garbage_drop(garbage *g) {
  int i;
  for (i = 0; i < g->n; i++) drop_value(g->t[i], g->bits[i]);
  g->n = 0;
}

static unsigned vlen_of(const kv *v) { return v->t == T_SSTR ? (unsigned)v->len : 0; }

static void slot_set_value(slot *sl, const kv *v) {
  uint32_t c = sl->ctl;
  unsigned w = !C_WHICH(c);
  __atomic_store_n(&sl->val[w], v->bits, __ATOMIC_RELAXED);
  __atomic_store_n(&sl->ctl, MKCTL(S_FULL, w, v->t, vlen_of(v), C_KT(c), C_KLEN(c)),
                   __ATOMIC_RELEASE);          /* publish */
}

/* Store prepared value v (T_NIL deletes) under k.  On success the table owns
   v; what it replaced goes to g.  0 ok, -1 the arena is full (unchanged). */
static int tab_store(stab *t, const kv *k, const kv *v, garbage *g) {
  long ins, i = tab_find(t, k, &ins);
  slot *sl;
  uint64_t keybits;
  int was_tomb;
  if (i >= 0) {
    uint32_t c;
    sl = &SLOTS(t)[i];
    c = sl->ctl;
    garbage_add(g, (int)C_VT(c), sl->val[C_WHICH(c)]);
    if (v->t != T_NIL) {
      slot_set_value(sl, v);
      return 0;
    }
    if (C_KT(c) == T_LSTR) garbage_add(g, T_LSTR, sl->key);
    __atomic_store_n(&sl->ctl, (c & ~3u) | S_TOMB, __ATOMIC_RELEASE);  /* publish */
    t->count--;
    t->tombs++;
    if (SCAP(t->slots) > 64 && t->count * 8 < SCAP(t->slots))
      (void)tab_rehash(t, cap_for(t->count));  /* shrink; harmless if full */
    return 0;
  }
  if (v->t == T_NIL) return 0;
  if (!t->slots || (t->count + t->tombs + 1) * 4 > SCAP(t->slots) * 3) {
    if (tab_rehash(t, cap_for(t->count + 1)) != 0) return -1;
    tab_find(t, k, &ins);
  }
  if (ins < 0) return -1;                      /* cannot happen: load <= 3/4 */
  keybits = k->bits;
  if (k->t == T_LSTR) {
    keybits = pt_shm_alloc(offsetof(lstr, data) + k->len + 1);
    if (!keybits) return -1;
    LSTR(keybits)->len = k->len;
    memcpy(LSTR(keybits)->data, k->s, k->len);
    LSTR(keybits)->data[k->len] = 0;
  }
  sl = &SLOTS(t)[ins];
  was_tomb = C_STATE(sl->ctl) == S_TOMB;
  sl->hash = k->hash;
  sl->key = keybits;
  sl->val[0] = v->bits;
  __atomic_store_n(&sl->ctl,
                   MKCTL(S_FULL, 0, v->t, vlen_of(v), k->t,
                         k->t == T_SSTR ? (unsigned)k->len : 0),
                   __ATOMIC_RELEASE);          /* publish */
  t->count++;
  if (was_tomb) t->tombs--;
  return 0;
}

/* ---- Lua side: handles ----------------------------------------------------------- */

/* A handle's count: dropped only while the table is the one it adopted. */
static void tab_drop(pt_off off, uint64_t gen) {
  if (pt_shm_gen_ok(&TAB(off)->gen, gen)) tab_decref(off);
}

static pt_shm_handle *tohandle(lua_State *L, int i) {
  pt_shm_handle *h = lua_touserdata(L, i);
  if (h && pt_rawlen(L, i) == sizeof(pt_shm_handle) && h->magic == PT_HANDLE_MAGIC &&
      h->kind == KIND_TABLE)
    return h;
  return NULL;
}

#define FREED_MSG "shared table has been freed (a count on it was dropped " \
  "too often; its memory may hold something else now)"

/* The live table of a handle: raises when it is released or when the
   table was freed under it (its generation is gone: never touch it). */
__attribute__((cold, noinline)) static void raise_dead(lua_State *L, pt_off off, int i) {
  if (!off) luaL_argerror(L, i, "shared table is released");
  luaL_error(L, FREED_MSG);
}

static stab *handle_tab(lua_State *L, const pt_shm_handle *h, int i) {
  pt_off off = pt_shm_handle_off(h);
  if (!off || !pt_shm_gen_ok(&TAB(off)->gen, h->gen)) raise_dead(L, off, i);
  return TAB(off);
}

static inline stab *checktab(lua_State *L, int i) {
  pt_shm_handle *h = tohandle(L, i);
  if (!h) {
    const char *msg = lua_pushfstring(L, "shared table expected, got %s", luaL_typename(L, i));
    luaL_argerror(L, i, msg);
  }
  return handle_tab(L, h, i);
}

static pt_off tab_off(stab *t) { return (pt_off)((char *)t - PT_SHM_PTR(char, 0)); }

/* A handle that holds nothing yet (so that creating it, which may raise,
   happens before a count is taken). */
static pt_shm_handle *push_blank(lua_State *L) {
  pt_shm_handle *h = pt_newuserdata(L, sizeof(pt_shm_handle));
  memset(h, 0, sizeof *h);
  h->magic = PT_HANDLE_MAGIC;
  h->kind = KIND_TABLE;
  luaL_getmetatable(L, TNAME);
  lua_setmetatable(L, -2);
  return h;
}

/* h takes over a count already held on the table at off. */
static void adopt(pt_shm_handle *h, pt_off off) {
  pt_shm_track(h, off, __atomic_load_n(&TAB(off)->gen, __ATOMIC_ACQUIRE), KIND_TABLE,
               tab_drop);
}

/* Before saying the arena is full: handles that are garbage but not yet
   collected may hold the space needed (the collector cannot see arena
   bytes), so collect this state once and let the caller try again. */
static void collect(lua_State *L) { lua_gc(L, LUA_GCCOLLECT, 0); }

static int raise_full(lua_State *L) {
  return luaL_error(L, "%s", pt_shm_full_msg());
}

static int raise_lock(lua_State *L) {
  if (errno == ECANCELED) return pt_raise_cancelled(L);
  return pt_raise_oserror(L, "shared table lock", errno);
}

/* ---- keys and values from Lua ------------------------------------------------------- */

static void number_key(lua_State *L, double d, kv *k) {
  if (d != d) luaL_error(L, "invalid key: NaN");
  if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && floor(d) == d) {
    k->t = T_INT;
    k->bits = (uint64_t)(int64_t)d;
  } else {
    k->t = T_FLT;
    memcpy(&k->bits, &d, 8);
  }
}

static void finish_key(kv *k) {
  switch (k->t) {
    case T_FALSE: k->hash = 0x5bd1e995u; break;
    case T_TRUE: k->hash = 0x1b873593u; break;
    case T_INT: k->hash = mix(k->bits); break;
    case T_FLT: k->hash = mix(k->bits ^ 0x6a09e667f3bcc909ULL); break;
    default: k->hash = hash_bytes(k->s, k->len); break;
  }
}

static void set_string(kv *k, const char *s, size_t len) {
  k->s = s;
  k->len = len;
  k->bits = 0;
  if (len <= 8) {
    k->t = T_SSTR;
    k->bits = load_small(s, len);
  } else {
    k->t = T_LSTR;
  }
}

static void tokey(lua_State *L, int i, kv *k) {
  k->s = NULL;
  k->len = 0;
  k->bits = 0;
  switch (lua_type(L, i)) {
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, i, &len);
      set_string(k, s, len);
      break;
    }
    case LUA_TNUMBER:
#if LUA_VERSION_NUM >= 503
      if (lua_isinteger(L, i)) {
        k->t = T_INT;
        k->bits = (uint64_t)lua_tointeger(L, i);
        break;
      }
#endif
      number_key(L, (double)lua_tonumber(L, i), k);
      break;
    case LUA_TBOOLEAN:
      k->t = lua_toboolean(L, i) ? T_TRUE : T_FALSE;
      break;
    default:
      luaL_error(L, "invalid key: %s (shared table keys are strings, numbers and booleans)",
                 luaL_typename(L, i));
  }
  finish_key(k);
}

static void push_kv(lua_State *L, const kv *v) {
  switch (v->t) {
    case T_FALSE: lua_pushboolean(L, 0); break;
    case T_TRUE: lua_pushboolean(L, 1); break;
    case T_INT:
#if LUA_VERSION_NUM >= 503
      lua_pushinteger(L, (lua_Integer)(int64_t)v->bits);
#else
      lua_pushnumber(L, (lua_Number)(int64_t)v->bits);
#endif
      break;
    case T_FLT: {
      double d;
      memcpy(&d, &v->bits, 8);
      lua_pushnumber(L, d);
      break;
    }
    case T_SSTR: {
      char b[8];
      memcpy(b, &v->bits, 8);
      lua_pushlstring(L, b, v->len);
      break;
    }
    case T_LSTR: lua_pushlstring(L, v->s, v->len); break;
    default: lua_pushnil(L); break;
  }
}

/* A printable name for a key, for error messages (pushed on the stack). */
static const char *key_name(lua_State *L, const kv *k) {
  push_kv(L, k);
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

/* A prepared value: what it needs in the arena is already taken. */
static void unprep(kv *v) {
  if (v->t == T_LSTR || v->t == T_TAB) drop_value(v->t, v->bits);
  v->t = T_NIL;
}

static pt_off copy_plain(lua_State *L, int idx, int depth, int visited);

/* Turn the Lua value at i into a prepared value.  A plain table is copied
   into a new shared table (its handle is left on the stack, so the caller
   must not rely on the stack top).  Raises on a value that cannot be
   stored; nothing is taken then. */
static void prep_value(lua_State *L, int i, kv *v, int depth, int *visited) {
  v->s = NULL;
  v->len = 0;
  v->bits = 0;
  switch (lua_type(L, i)) {
    case LUA_TNIL: v->t = T_NIL; return;
    case LUA_TBOOLEAN: v->t = lua_toboolean(L, i) ? T_TRUE : T_FALSE; return;
    case LUA_TNUMBER: {
      double d;
#if LUA_VERSION_NUM >= 503
      if (lua_isinteger(L, i)) {
        v->t = T_INT;
        v->bits = (uint64_t)lua_tointeger(L, i);
        return;
      }
#endif
      d = (double)lua_tonumber(L, i);
      v->t = T_FLT;
      memcpy(&v->bits, &d, 8);
      return;
    }
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, i, &len);
      set_string(v, s, len);
      if (v->t == T_LSTR) {
        pt_off o = pt_shm_alloc(offsetof(lstr, data) + len + 1);
        if (!o) {
          collect(L);
          o = pt_shm_alloc(offsetof(lstr, data) + len + 1);
          if (!o) raise_full(L);
        }
        LSTR(o)->len = len;
        memcpy(LSTR(o)->data, s, len);
        LSTR(o)->data[len] = 0;
        v->bits = o;
      }
      return;
    }
    case LUA_TUSERDATA: {
      pt_shm_handle *h = tohandle(L, i);
      if (h) {
        stab *t;
        if (!pt_shm_handle_off(h)) luaL_error(L, "cannot store a released shared table");
        t = handle_tab(L, h, i);
        pt_shm_incref(&t->refs);
        v->t = T_TAB;
        v->bits = tab_off(t);
        return;
      }
      break;
    }
    case LUA_TTABLE: {
      pt_off o;
      i = pt_absindex(L, i);
      if (!*visited) {
        lua_newtable(L);
        *visited = lua_gettop(L);
      }
      o = copy_plain(L, i, depth + 1, *visited);
      pt_shm_incref(&TAB(o)->refs);            /* the slot's own count */
      v->t = T_TAB;
      v->bits = o;
      return;
    }
    default: break;
  }
  luaL_error(L, "cannot store a %s in a shared table", luaL_typename(L, i));
}

/* Store into t and raise when the arena is full (v is then released). */
static void store_or_raise(lua_State *L, stab *t, const kv *k, kv *v) {
  garbage g;
  int r, attempt;
  for (attempt = 0; attempt < 2; attempt++) {
    g.n = 0;
    tab_prefetch(t, k->hash);
    if (tab_lock(t) != 0) { unprep(v); raise_lock(L); }
    r = tab_store(t, k, v, &g);
    tab_unlock(t);
    garbage_drop(&g);
    if (r == 0) return;
    if (attempt == 0) collect(L);
  }
  unprep(v);
  raise_full(L);
}

/* Copy the plain table at idx into a new shared table, whose handle is
   pushed; returns its offset.  visited: plain table -> true while being
   copied, its handle once copied (shared parts stay shared; a cycle is an
   error, since counted references could never free it). */
static pt_off copy_plain(lua_State *L, int idx, int depth, int visited) {
  pt_shm_handle *h;
  pt_off off;
  stab *t;
  int top;
  if (depth > PT_CODEC_MAXDEPTH) luaL_error(L, "cannot store a table nested deeper than %d", PT_CODEC_MAXDEPTH);
  luaL_checkstack(L, 8, "shared table copy");
  lua_pushvalue(L, idx);
  lua_rawget(L, visited);                                   /* L: ... seen */
  if (lua_isuserdata(L, -1)) return pt_shm_handle_off(lua_touserdata(L, -1));
  if (lua_toboolean(L, -1)) luaL_error(L, "cannot store a table that contains itself (a cycle)");
  lua_pop(L, 1);
  h = push_blank(L);                                        /* L: ... h */
  off = tab_new();
  if (!off && errno == ENOMEM) {
    collect(L);
    off = tab_new();
  }
  if (!off) {
    if (errno == ENOMEM) raise_full(L);
    raise_lock(L);
  }
  adopt(h, off);
  t = TAB(off);
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, visited);
  top = lua_gettop(L);
  lua_pushnil(L);                                           /* L: ... h nil */
  while (lua_next(L, idx)) {                                /* L: ... h k v */
    kv k, v;
    int vis = visited;
    tokey(L, -2, &k);
    prep_value(L, -1, &v, depth, &vis);                     /* may push a handle */
    store_or_raise(L, t, &k, &v);
    lua_settop(L, top + 1);                                 /* L: ... h k */
  }
  lua_pushvalue(L, idx);
  lua_pushvalue(L, top);
  lua_rawset(L, visited);                                   /* visited[plain] = h */
  return off;
}

/* Once a copy is stored, the handles made while copying hold counts that
   nothing needs any more (each new table is held by its parent's slot):
   drop them now rather than whenever the collector runs, so that a process
   killed later does not take them with it.  `keep`: a handle to leave
   alone (the one returned to the caller), or NULL. */
static void release_visited(lua_State *L, int visited, const pt_shm_handle *keep) {
  if (!visited) return;
  lua_pushnil(L);
  while (lua_next(L, visited)) {
    pt_shm_handle *h = tohandle(L, -1);
    if (h && h != keep) pt_shm_release(h);
    lua_pop(L, 1);
  }
}

/* ---- reading ---------------------------------------------------------------------- */

/* Reading a value must not call Lua while the lock is held (an error would
   leave it held), so the room a value needs is made beforehand: a stack
   buffer for short strings, a Lua userdata for long ones, a blank handle
   for a table.  When the value found does not fit, the reader releases the
   lock, makes room (which may raise: nothing is held then) and reads
   again. */
typedef struct reader {
  int base;                                  /* stack top on entry */
  pt_shm_handle *blank;
  int blank_idx;                             /* its stack index */
  char small[256];
  char *buf;
  size_t bufsz;
  int need_tab;
  size_t need_len;
} reader;

static void reader_init(lua_State *L, reader *r) {
  r->base = lua_gettop(L);
  r->blank = NULL;
  r->blank_idx = 0;
  r->buf = r->small;
  r->bufsz = sizeof r->small;
  r->need_tab = 0;
  r->need_len = 0;
}

/* Under the lock: can the value in sl be read into r now? */
static int reader_fits(reader *r, const slot *sl) {
  uint32_t c = sl->ctl;
  unsigned vt = C_VT(c);
  if (vt == T_TAB && !r->blank) { r->need_tab = 1; return 0; }
  if (vt == T_LSTR && LSTR(sl->val[C_WHICH(c)])->len > r->bufsz) {
    r->need_len = (size_t)LSTR(sl->val[C_WHICH(c)])->len;
    return 0;
  }
  return 1;
}

/* Lock released: make the room reader_fits asked for. */
static void reader_grow(lua_State *L, reader *r) {
  if (r->need_tab && !r->blank) {
    r->blank = push_blank(L);
    r->blank_idx = lua_gettop(L);
  }
  if (r->need_len > r->bufsz) {
    r->buf = lua_newuserdata(L, r->need_len);
    r->bufsz = r->need_len;
  }
}

/* Under the lock, after reader_fits: copy the value of sl into v (strings
   into r's buffer; a table gets a count, adopted by reader_push). */
static inline void reader_load(reader *r, const slot *sl, kv *v) {
  uint32_t c = sl->ctl;
  v->t = (int)C_VT(c);
  v->bits = sl->val[C_WHICH(c)];
  v->len = C_VLEN(c);
  v->s = NULL;
  if (v->t == T_LSTR) {
    const lstr *ls = LSTR(v->bits);
    v->len = (size_t)ls->len;
    memcpy(r->buf, ls->data, v->len);
    v->s = r->buf;
  } else if (v->t == T_TAB) {
    pt_shm_incref(&TAB(v->bits)->refs);
  }
}

/* Lock released: leave v (nil when v is NULL) as the only value above the
   entry top. */
static inline void reader_push(lua_State *L, reader *r, const kv *v) {
  if (v && v->t == T_TAB) {
    adopt(r->blank, v->bits);
    lua_pushvalue(L, r->blank_idx);
  } else if (v) {
    push_kv(L, v);
  } else {
    lua_pushnil(L);
  }
  if (lua_gettop(L) > r->base + 1) {
    lua_replace(L, r->base + 1);
    lua_settop(L, r->base + 1);
  }
}

/* Push t[k] (nil when absent). */
static void get_push(lua_State *L, stab *t, const kv *k) {
  reader r;
  reader_init(L, &r);
  for (;;) {
    long ins, i;
    kv v;
    tab_prefetch(t, k->hash);
    if (tab_lock(t) != 0) raise_lock(L);
    i = tab_find(t, k, &ins);
    if (i < 0) {
      tab_unlock(t);
      reader_push(L, &r, NULL);
      return;
    }
    if (!reader_fits(&r, &SLOTS(t)[i])) {
      tab_unlock(t);
      reader_grow(L, &r);
      continue;
    }
    reader_load(&r, &SLOTS(t)[i], &v);
    tab_unlock(t);
    reader_push(L, &r, &v);
    return;
  }
}

static int l_index(lua_State *L) {
  stab *t = checktab(L, 1);
  kv k;
  tokey(L, 2, &k);
  get_push(L, t, &k);
  return 1;
}

static int l_newindex(lua_State *L) {
  stab *t = checktab(L, 1);
  kv k, v;
  int visited = 0;
  tokey(L, 2, &k);
  prep_value(L, 3, &v, 0, &visited);
  store_or_raise(L, t, &k, &v);
  release_visited(L, visited, NULL);
  return 0;
}

static int present(stab *t, int64_t n) {
  kv k;
  long ins;
  k.t = T_INT;
  k.bits = (uint64_t)n;
  k.s = NULL;
  k.len = 0;
  finish_key(&k);
  return tab_find(t, &k, &ins) >= 0;
}

/* A border, found like Lua's own: double until absent, then bisect. */
static int l_len(lua_State *L) {
  stab *t = checktab(L, 1);
  int64_t i = 0, j = 1;
  if (tab_lock(t) != 0) raise_lock(L);
  if (present(t, 1)) {
    i = 1;
    j = 2;
    while (present(t, j)) {
      i = j;
      if (j > INT64_MAX / 2) { j = INT64_MAX; if (present(t, j)) { i = j; } break; }
      j *= 2;
    }
    while (j - i > 1) {
      int64_t m = i + (j - i) / 2;
      if (present(t, m)) i = m;
      else j = m;
    }
  }
  tab_unlock(t);
  lua_pushinteger(L, (lua_Integer)i);
  return 1;
}

/* ---- dumps: a copy of a table's entries taken under its lock ------------------------- */

typedef struct dent {
  kv k, v;
  size_t kpos, vpos;
} dent;

typedef struct dump {
  size_t n, pos;
  dent *e;
  pt_buf strs;
  pid_t pid;
} dump;

static void dump_clear(dump *d) {
  size_t i;
  if (d->pid == getpid())
    for (i = 0; i < d->n; i++)
      if (d->e[i].v.t == T_TAB) tab_decref(d->e[i].v.bits);
  free(d->e);
  pt_buf_free(&d->strs);
  d->e = NULL;
  d->n = d->pos = 0;
}

static int l_dump_gc(lua_State *L) {
  dump *d = luaL_checkudata(L, 1, DUMPNAME);
  dump_clear(d);
  return 0;
}

static int add_str(dump *d, const kv *x, size_t *pos) {
  if (x->t == T_LSTR) {
    const lstr *ls = LSTR(x->bits);
    *pos = d->strs.len;
    return pt_buf_add(&d->strs, ls->data, (size_t)ls->len);
  }
  return 0;
}

/* Push a dump of t: keys, and values too when `values`.  Raises on lock
   or memory failure (nothing is taken then). */
static dump *push_dump(lua_State *L, stab *t, int values) {
  dump *d = pt_newuserdata(L, sizeof(dump));
  slot *a;
  uint64_t i, cap;
  int oom = 0;
  memset(d, 0, sizeof *d);
  pt_buf_init(&d->strs);
  d->pid = getpid();
  luaL_getmetatable(L, DUMPNAME);
  lua_setmetatable(L, -2);
  if (tab_lock(t) != 0) raise_lock(L);
  if (t->slots && t->count) {
    a = SLOTS(t);
    cap = SCAP(t->slots);
    d->e = malloc((size_t)t->count * sizeof(dent));
    if (!d->e) oom = 1;
    for (i = 0; !oom && i < cap; i++) {
      const slot *sl = &a[i];
      uint32_t c = sl->ctl;
      dent *e;
      if (C_STATE(c) != S_FULL) continue;
      if (d->n >= t->count) break;
      e = &d->e[d->n];
      e->k.t = (int)C_KT(c);
      e->k.bits = sl->key;
      e->k.len = C_KLEN(c);
      e->k.hash = sl->hash;
      if (e->k.t == T_LSTR) e->k.len = (size_t)LSTR(sl->key)->len;
      if (add_str(d, &e->k, &e->kpos)) { oom = 1; break; }
      e->v.t = T_NIL;
      if (values) {
        e->v.t = (int)C_VT(c);
        e->v.bits = sl->val[C_WHICH(c)];
        e->v.len = C_VLEN(c);
        if (e->v.t == T_LSTR) e->v.len = (size_t)LSTR(e->v.bits)->len;
        if (add_str(d, &e->v, &e->vpos)) { oom = 1; break; }
        if (e->v.t == T_TAB) pt_shm_incref(&TAB(e->v.bits)->refs);
      }
      d->n++;
    }
  }
  tab_unlock(t);
  if (oom) {
    dump_clear(d);
    luaL_error(L, "not enough memory");
  }
  for (i = 0; i < d->n; i++) {               /* strings: now that strs is final */
    dent *e = &d->e[i];
    if (e->k.t == T_LSTR) e->k.s = d->strs.data + e->kpos;
    if (e->v.t == T_LSTR) e->v.s = d->strs.data + e->vpos;
  }
  return d;
}

/* ---- pairs ------------------------------------------------------------------------- */

/* Iterate over the keys present when iteration began, each at most once,
   with its value at the time it is visited (keys removed since are
   skipped).  The state is a plain table {handle, dump}, not upvalues of a
   fresh closure: LuaJIT's traces keep the closures they call alive, which
   would keep the shared table alive with them. */
static int l_pairs_iter(lua_State *L) {
  pt_shm_handle *h;
  dump *d;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_rawgeti(L, 1, 1);
  lua_rawgeti(L, 1, 2);                                     /* L: state h dump */
  h = tohandle(L, 2);
  d = pt_testudata(L, 3, DUMPNAME);
  if (!h || !d) return luaL_argerror(L, 1, "not a shared table iteration");
  if (!pt_shm_handle_off(h)) return luaL_error(L, "shared table is released");
  while (d->pos < d->n) {
    dent *e = &d->e[d->pos++];
    push_kv(L, &e->k);
    get_push(L, handle_tab(L, h, 1), &e->k);
    if (!lua_isnil(L, -1)) return 2;
    lua_pop(L, 2);
  }
  lua_pushnil(L);
  return 1;
}

static int l_pairs(lua_State *L) {
  stab *t = checktab(L, 1);
  lua_settop(L, 1);
  lua_pushcfunction(L, l_pairs_iter);
  lua_createtable(L, 2, 0);                                 /* L: st iter state */
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  push_dump(L, t, 0);
  lua_rawseti(L, -2, 2);
  lua_pushnil(L);
  return 3;
}

/* ---- snapshot --------------------------------------------------------------------- */

static void snapshot(lua_State *L, pt_off off, int visited, int depth) {
  dump *d;
  size_t i;
  int tbl;
  luaL_checkstack(L, 8, "snapshot");
  lua_pushinteger(L, (lua_Integer)off);
  lua_rawget(L, visited);
  if (!lua_isnil(L, -1)) return;             /* shared part or cycle */
  lua_pop(L, 1);
  if (depth > PT_CODEC_MAXDEPTH) luaL_error(L, "snapshot: tables nested deeper than %d", PT_CODEC_MAXDEPTH);
  d = push_dump(L, TAB(off), 1);                             /* L: dump */
  lua_createtable(L, 0, (int)(d->n > 1000000 ? 1000000 : d->n));   /* L: dump t */
  lua_pushinteger(L, (lua_Integer)off);
  lua_pushvalue(L, -2);
  lua_rawset(L, visited);
  tbl = lua_gettop(L);
  for (i = 0; i < d->n; i++) {
    dent *e = &d->e[i];
    push_kv(L, &e->k);                                       /* L: dump t k */
    if (e->v.t == T_TAB) snapshot(L, e->v.bits, visited, depth + 1);
    else push_kv(L, &e->v);                                  /* L: dump t k v */
    lua_rawset(L, tbl);
  }
  dump_clear(d);
  lua_remove(L, tbl - 1);                                    /* L: t */
}

static int l_snapshot(lua_State *L) {
  pt_off off = tab_off(checktab(L, 1));
  lua_settop(L, 1);
  lua_newtable(L);                                           /* L: st visited */
  snapshot(L, off, 2, 0);
  return 1;
}

/* ---- atomic operations ------------------------------------------------------------- */

static int add_impl(lua_State *L, int may_collect) {
  stab *t = checktab(L, 1);
  kv k, v;
  long ins, i;
  int isint = 0;
  lua_Number dn;
  int64_t di = 0;
  tokey(L, 2, &k);
#if LUA_VERSION_NUM >= 503
  if (lua_isinteger(L, 3)) {
    isint = 1;
    di = (int64_t)lua_tointeger(L, 3);
    dn = (lua_Number)di;
  } else
#endif
  {
    if (lua_type(L, 3) != LUA_TNUMBER)
      return luaL_argerror(L, 3, lua_pushfstring(L, "number expected, got %s", luaL_typename(L, 3)));
    dn = lua_tonumber(L, 3);
  }
  tab_prefetch(t, k.hash);
  if (tab_lock(t) != 0) raise_lock(L);
  i = tab_find(t, &k, &ins);
  if (i >= 0) {
    slot *sl = &SLOTS(t)[i];
    uint32_t c = sl->ctl;
    uint64_t cur = sl->val[C_WHICH(c)];
    int ct = (int)C_VT(c);
    if (ct == T_INT && isint) {
      v.t = T_INT;
      v.bits = cur + (uint64_t)di;           /* wraps around like Lua */
    } else if (ct == T_INT || ct == T_FLT) {
      double a, r;
      if (ct == T_INT) a = (double)(int64_t)cur;
      else memcpy(&a, &cur, 8);
      r = a + (double)dn;
      v.t = T_FLT;
      memcpy(&v.bits, &r, 8);
    } else {
      static const char *const names[] = {"nil", "boolean", "boolean", "number", "number",
                                          "string", "string", "shared table"};
      tab_unlock(t);
      return luaL_error(L, "pt.add: the value at key %s is a %s, not a number",
                        key_name(L, &k), names[ct]);
    }
    v.s = NULL;
    v.len = 0;
    slot_set_value(sl, &v);
    tab_unlock(t);
  } else {
    garbage g;
    int r;
    g.n = 0;
    v.s = NULL;
    v.len = 0;
    if (isint) { v.t = T_INT; v.bits = (uint64_t)di; }
    else { double r0 = (double)dn; v.t = T_FLT; memcpy(&v.bits, &r0, 8); }
    r = tab_store(t, &k, &v, &g);
    tab_unlock(t);
    if (r != 0) {
      if (!may_collect) return raise_full(L);
      collect(L);
      return add_impl(L, 0);
    }
  }
  push_kv(L, &v);
  return 1;
}

static int l_add(lua_State *L) { return add_impl(L, 1); }

/* The Lua value at i as a value to compare with (nothing is taken). */
static void expected_value(lua_State *L, int i, kv *e) {
  e->t = T_NIL;
  e->s = NULL;
  e->len = 0;
  e->bits = 0;
  switch (lua_type(L, i)) {
    case LUA_TNIL: e->t = T_NIL; return;
    case LUA_TBOOLEAN: e->t = lua_toboolean(L, i) ? T_TRUE : T_FALSE; return;
    case LUA_TNUMBER: {
      double d;
#if LUA_VERSION_NUM >= 503
      if (lua_isinteger(L, i)) { e->t = T_INT; e->bits = (uint64_t)lua_tointeger(L, i); return; }
#endif
      d = (double)lua_tonumber(L, i);
      e->t = T_FLT;
      memcpy(&e->bits, &d, 8);
      return;
    }
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, i, &len);
      set_string(e, s, len);
      return;
    }
    case LUA_TUSERDATA: {
      pt_shm_handle *h = tohandle(L, i);
      if (h && pt_shm_handle_off(h)) { e->t = T_TAB; e->bits = tab_off(handle_tab(L, h, i)); return; }
      break;
    }
    default: break;
  }
  luaL_argerror(L, i, lua_pushfstring(L, "a %s can never be the value of a shared table",
                                      luaL_typename(L, i)));
}

static int num_eq(int ta, uint64_t a, int tb, uint64_t b) {
  double d;
  int64_t n;
  if (ta == T_INT && tb == T_INT) return a == b;
  if (ta == T_FLT && tb == T_FLT) {
    double x, y;
    memcpy(&x, &a, 8);
    memcpy(&y, &b, 8);
    return x == y;
  }
  if (ta == T_INT) { n = (int64_t)a; memcpy(&d, &b, 8); }
  else { n = (int64_t)b; memcpy(&d, &a, 8); }
  return d >= -9223372036854775808.0 && d < 9223372036854775808.0 && (int64_t)d == n &&
         floor(d) == d;
}

/* Is the value in slot i (or absence, i < 0) equal to e, as == says? */
static int slot_equals(stab *t, long i, const kv *e) {
  const slot *sl;
  uint32_t c;
  int vt;
  uint64_t bits;
  if (i < 0) return e->t == T_NIL;
  sl = &SLOTS(t)[i];
  c = sl->ctl;
  vt = (int)C_VT(c);
  bits = sl->val[C_WHICH(c)];
  switch (e->t) {
    case T_NIL: return 0;
    case T_FALSE: case T_TRUE: return vt == e->t;
    case T_INT: case T_FLT: return (vt == T_INT || vt == T_FLT) && num_eq(vt, bits, e->t, e->bits);
    case T_SSTR: return vt == T_SSTR && C_VLEN(c) == e->len && bits == e->bits;
    case T_LSTR: return vt == T_LSTR && LSTR(bits)->len == e->len &&
                        memcmp(LSTR(bits)->data, e->s, e->len) == 0;
    case T_TAB: return vt == T_TAB && bits == e->bits;
    default: return 0;
  }
}

/* pt.cas(st, k, expected, new) -> true | false, current */
static int cas_impl(lua_State *L, int may_collect) {
  stab *t = checktab(L, 1);
  kv k, e, v;
  reader r;
  luaL_checkany(L, 3);
  lua_settop(L, 4);
  tokey(L, 2, &k);
  expected_value(L, 3, &e);
  reader_init(L, &r);                                       /* L: st k e new */
  for (;;) {
    long ins, i;
    kv cur;
    int visited = 0;
    prep_value(L, 4, &v, 0, &visited);
    if (tab_lock(t) != 0) { unprep(&v); raise_lock(L); }
    i = tab_find(t, &k, &ins);
    if (slot_equals(t, i, &e)) {
      garbage g;
      int rs;
      g.n = 0;
      rs = tab_store(t, &k, &v, &g);
      tab_unlock(t);
      garbage_drop(&g);
      if (rs != 0) {
        unprep(&v);
        if (!may_collect) return raise_full(L);
        collect(L);
        lua_settop(L, 4);
        return cas_impl(L, 0);
      }
      release_visited(L, visited, NULL);
      lua_pushboolean(L, 1);
      return 1;
    }
    if (i >= 0 && !reader_fits(&r, &SLOTS(t)[i])) {
      tab_unlock(t);
      unprep(&v);                            /* made again on the next try */
      reader_grow(L, &r);
      continue;
    }
    if (i >= 0) reader_load(&r, &SLOTS(t)[i], &cur);
    tab_unlock(t);
    unprep(&v);
    reader_push(L, &r, i >= 0 ? &cur : NULL);              /* L: st k e new cur */
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
}

static int l_cas(lua_State *L) { return cas_impl(L, 1); }

/* pt.locked(st, fn, ...) -> the results of fn(st, ...), run holding st's
   lock; an error (cancellation included) releases it and propagates. */
static int l_locked(lua_State *L) {
  stab *t = checktab(L, 1);
  int n = lua_gettop(L), i, r;
  pt_off off = tab_off(t);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checkstack(L, n + LUA_MINSTACK, "pt.locked");
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  for (i = 3; i <= n; i++) lua_pushvalue(L, i);            /* L: st fn ... fn st ... */
  if (tab_lock(t) != 0) raise_lock(L);      /* a cancellation point */
  pt_shm_incref(&t->refs);                   /* fn may release its handle */
  r = lua_pcall(L, n - 1, LUA_MULTRET, 0);
  tab_unlock(t);
  tab_decref(off);
  if (r != 0) return lua_error(L);
  return lua_gettop(L) - n;
}

/* ---- handle metamethods -------------------------------------------------------------- */

static int l_gc(lua_State *L) {
  pt_shm_handle *h = tohandle(L, 1);
  if (h) pt_shm_release(h);
  return 0;
}

static int l_eq(lua_State *L) {
  pt_shm_handle *a = tohandle(L, 1), *b = tohandle(L, 2);
  pt_off x = a ? pt_shm_handle_off(a) : 0;
  lua_pushboolean(L, x && b && x == pt_shm_handle_off(b) && a->gen == b->gen);
  return 1;
}

static int l_tostring(lua_State *L) {
  pt_shm_handle *h = tohandle(L, 1);
  pt_off off = h ? pt_shm_handle_off(h) : 0;
  if (off && !pt_shm_gen_ok(&TAB(off)->gen, h->gen)) lua_pushstring(L, TNAME " (freed)");
  else if (off) lua_pushfstring(L, TNAME ": %p", (void *)(uintptr_t)off);
  else lua_pushstring(L, TNAME " (released)");
  return 1;
}

/* pt.release(x): drop this handle's reference now (shared table or array);
   using the handle afterwards is an error.  Safe to call twice. */
static int l_release(lua_State *L) {
  pt_shm_handle *h = tohandle(L, 1);
  if (h) {
    pt_shm_release(h);
    return 0;
  }
  if (pt_array_release(L, 1)) return 0;
  return luaL_argerror(L, 1, lua_pushfstring(L, "shared table or array expected, got %s",
                                             luaL_typename(L, 1)));
}

/* pt._shm_release(x): INTERNAL, for the specs only, never for programs.
   Drops one count on the shared table or shared array x names, as a count
   dropped too often would, and leaves x as it is: when that was the last
   count the object is freed under x, and every later use of x must raise
   instead of touching the memory. */
static int l_shm_release_internal(lua_State *L) {
  pt_shm_handle *h = tohandle(L, 1);
  if (h) {
    tab_decref(tab_off(checktab(L, 1)));
    return 0;
  }
  if (pt_array_drop_count(L, 1)) return 0;
  return luaL_argerror(L, 1, lua_pushfstring(L, "shared table or shared array expected, got %s",
                                             luaL_typename(L, 1)));
}

/* pt.shared_table([init]) -> st | nil, err, errno */
static int l_shared_table(lua_State *L) {
  pt_shm_handle *h;
  pt_off off;
  int visited = 0;
  if (!lua_isnoneornil(L, 1) && !lua_istable(L, 1))
    return luaL_argerror(L, 1, lua_pushfstring(L, "table or nil expected, got %s",
                                               luaL_typename(L, 1)));
  lua_settop(L, 1);
  if (pt_shm_ensure() != 0) return pt_push_shm_error(L, errno);
  if (lua_istable(L, 1)) {
    lua_newtable(L);
    visited = 2;
    copy_plain(L, 1, 0, visited);                          /* L: init visited h */
    release_visited(L, visited, tohandle(L, 3));
    lua_settop(L, 3);
    return 1;
  }
  h = push_blank(L);
  off = tab_new();
  if (!off && errno == ENOMEM) {
    collect(L);
    off = tab_new();
  }
  if (!off) {
    if (errno == ENOMEM) return raise_full(L);
    return raise_lock(L);
  }
  adopt(h, off);
  return 1;
}

static int l_pt_pairs(lua_State *L) {
  checktab(L, 1);
  return l_pairs(L);
}

/* ---- arena configuration and statistics ------------------------------------------------ */

/* pt.configure{ shm_size = v }: v (at -1) is a number of bytes or a size
   like "256M"; refused with the reason (too small, more than an arena may
   hold, more than the address-space limit, 64-bit overflow). */
static void configure_size(lua_State *L) {
  uint64_t size = 0, cur;
  char why[200], have[64];
  if (lua_type(L, -1) == LUA_TNUMBER) {
    lua_Number n = lua_tonumber(L, -1);
    if (!(n >= 0)) luaL_argerror(L, 1, "shm_size must be a number of bytes >= 1M, or a size like \"256M\"");
    size = n >= 18446744073709551615.0 ? ~0ULL : (uint64_t)n;
  } else if (lua_type(L, -1) == LUA_TSTRING) {
    int r = pt_shm_parse_size(lua_tostring(L, -1), &size);
    if (r == -1)
      luaL_argerror(L, 1, lua_pushfstring(L, "shm_size: '%s' is not a size (write it like 16M, "
                                             "1G or a number of bytes)", lua_tostring(L, -1)));
    if (r == -2) size = ~0ULL;
  } else {
    luaL_argerror(L, 1, "shm_size must be a number of bytes or a size like \"256M\"");
  }
  if (pt_shm_size_problem(size, why, sizeof why))
    luaL_argerror(L, 1, lua_pushfstring(L, "shm_size: %s", why));
  cur = pt_shm_config_size();
  if (pt_shm_set_size(size) != 0 && ((size + 4095) & ~4095ULL) != cur) {
    snprintf(have, sizeof have, "%llu bytes", (unsigned long long)cur);
    luaL_error(L, "shm_size: the shared arena is already mapped (%s); "
                  "configure it before first use", have);
  }
}

static int l_configure(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    if (k && strcmp(k, "shm_size") == 0) {
      configure_size(L);
    } else if (k && strcmp(k, "cancel_signal") == 0) {
      const char *why = pt_set_cancel_signal(lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : -1);
      if (why) return luaL_error(L, "configure: %s", why);
    } else if (k) {
      return luaL_argerror(L, 1, lua_pushfstring(L, "unknown option '%s'", k));
    } else {
      return luaL_argerror(L, 1, "option names must be strings");
    }
    lua_pop(L, 1);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_shm_stats(lua_State *L) {
  pt_shm_stat st;
  pt_shm_getstats(&st);
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, (lua_Integer)st.size); lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)st.used); lua_setfield(L, -2, "used");
  lua_pushinteger(L, (lua_Integer)st.peak); lua_setfield(L, -2, "peak");
  lua_pushinteger(L, (lua_Integer)st.objects); lua_setfield(L, -2, "objects");
  lua_pushinteger(L, (lua_Integer)st.recoveries); lua_setfield(L, -2, "recoveries");
  lua_pushinteger(L, (lua_Integer)st.alloc_recoveries); lua_setfield(L, -2, "alloc_recoveries");
  lua_pushboolean(L, st.mapped); lua_setfield(L, -2, "mapped");
  return 1;
}

/* pt._shm_check() -> true | false, what is wrong (for the specs) */
static int l_shm_check(lua_State *L) {
  const char *bad = pt_shm_check();
  if (!bad) { lua_pushboolean(L, 1); return 1; }
  lua_pushboolean(L, 0);
  lua_pushstring(L, bad);
  return 2;
}

/* ---- crossing between states (codec) ---------------------------------------------------- */

/* A reference is the table's offset and generation. */
static const char *x_encode(lua_State *L, int idx, pt_ref *ref) {
  pt_shm_handle *h = tohandle(L, idx);
  pt_off off = h ? pt_shm_handle_off(h) : 0;
  if (!h) return "not a shared table";
  if (!off) return "shared table is released";
  if (!pt_shm_gen_ok(&TAB(off)->gen, h->gen)) return FREED_MSG;
  pt_shm_incref(&TAB(off)->refs);
  ref->a = off;
  ref->b = h->gen;
  return NULL;
}

static int valid_ref(const pt_ref *ref) {
  uint64_t size;
  if (!pt_shm_mapped()) return 0;
  size = pt_shm_config_size();
  if (ref->a < 64 || ref->a % 16 || ref->a > size - sizeof(stab)) return 0;
  return __atomic_load_n(&TAB(ref->a)->magic, __ATOMIC_RELAXED) == TAB_MAGIC && pt_shm_gen_ok(&TAB(ref->a)->gen, ref->b);
}

static void x_release(const pt_ref *ref) {
  if (valid_ref(ref)) tab_decref(ref->a);
}

static const char *x_decode(lua_State *L, const pt_ref *ref) {
  pt_shm_handle *h;
  if (!valid_ref(ref))
    return "corrupt message (bad shared table reference, or the table has been freed)";
  h = push_blank(L);
  adopt(h, ref->a);
  return NULL;
}

const pt_xtype pt_xtype_table = {TNAME, x_encode, x_release, x_decode};

void pt_open_table(lua_State *L) {
  static const luaL_Reg meta[] = {
    {"__index", l_index}, {"__newindex", l_newindex}, {"__len", l_len},
    {"__gc", l_gc}, {"__eq", l_eq}, {"__tostring", l_tostring},
#if LUA_VERSION_NUM >= 502
    {"__pairs", l_pairs},
#endif
#if LUA_VERSION_NUM >= 504
    {"__close", l_gc},
#endif
    {NULL, NULL}};
  static const luaL_Reg fns[] = {
    {"shared_table", l_shared_table}, {"add", l_add}, {"cas", l_cas},
    {"locked", l_locked}, {"snapshot", l_snapshot}, {"pairs", l_pt_pairs},
    {"release", l_release}, {"configure", l_configure}, {"shm_stats", l_shm_stats},
    {"_shm_check", l_shm_check}, {"_shm_release", l_shm_release_internal}, {NULL, NULL}};
  pt_shm_init_process();
  if (luaL_newmetatable(L, TNAME)) {
    pt_setfuncs(L, meta);
    lua_pushstring(L, TNAME);
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, DUMPNAME)) {
    lua_pushcfunction(L, l_dump_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  pt_setfuncs(L, fns);
}
