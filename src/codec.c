/* codec.c - Lua values to bytes and back, between Lua states.
 *
 * One encoder, one decoder, one walker (to drop the references of a
 * buffer that will never be decoded).  The format is a sequence of
 * values, each a tag byte followed by its payload:
 *
 *   'n' nil   'f' false   't' true   'G' the receiver's globals
 *   'i' int64 (5.3+)       'd' double
 *   's' varint length, bytes
 *   'T' flags, pairs of values..., 'e'  [metatable value if flags&1]
 *   'R' varint id          (a table or function seen before)
 *   'F' u64 length, u64 check, bytecode, u8 nups, upvalue slots
 *       (an upvalue slot is a value, or 'J' varint fid, u8 idx: shared
 *       with upvalue idx of function fid)
 *   'C' string module, string key   (a C function by name)
 *   'M' string module                (a table of package.loaded)
 *   'X' u8 type, 16-byte reference   (shared table, array, pipe)
 *   'K' u8 kind, u64 where, u64 nonce (the ticket: first, and only in a
 *       message holding references; see "tickets" below)
 *
 * Tables and functions get ids in the order they are first met, on both
 * sides, which preserves shared parts and cycles.  The decoder checks
 * every tag and length and never reads past the end; bytecode is only
 * loaded when its keyed check matches, so random bytes never reach the
 * Lua loader (the check covers the upvalue count too).  Nesting is
 * bounded (PT_CODEC_MAXDEPTH).  The decoder checks the whole buffer
 * (structure, tags, lengths, ids, the ticket) before it makes anything
 * or loads any module, and looks names up with raw accesses only. */
#include "pt.h"
#include "shm.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define T_NIL 'n'
#define T_FALSE 'f'
#define T_TRUE 't'
#define T_GLOBALS 'G'
#define T_INT 'i'
#define T_DOUBLE 'd'
#define T_STRING 's'
#define T_TABLE 'T'
#define T_END 'e'
#define T_REF 'R'
#define T_FUNC 'F'
#define T_JOIN 'J'
#define T_CFUNC 'C'
#define T_MODULE 'M'
#define T_XREF 'X'
#define T_TICKET 'K'
#define TICKET_LEN 18

static const pt_xtype *const xtypes[] = {&pt_xtype_table, &pt_xtype_array,
                                         &pt_xtype_pipe, &pt_xtype_channel, &pt_xtype_semaphore, &pt_xtype_event, &pt_xtype_barrier};
#define NXTYPES ((int)(sizeof xtypes / sizeof xtypes[0]))

/* ---- the bytecode check key: one per process tree ------------------------ */

static uint64_t code_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void make_key(void) {
  uint64_t k = 0;
  if (getrandom(&k, sizeof k, 0) != (ssize_t)sizeof k) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    k = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
  }
  code_key = k | 1;
}

static uint64_t code_check(const char *p, size_t n, int nups) {
  uint64_t h = 0xcbf29ce484222325ull ^ code_key;
  size_t i;
  for (i = 0; i < n; i++) {
    h ^= (unsigned char)p[i];
    h *= 0x100000001b3ull;
  }
  h ^= (uint64_t)nups; h *= 0x100000001b3ull;
  h ^= h >> 29; h *= code_key; h ^= h >> 32;
  return h;
}

/* ---- tickets: a message's references are adopted once -------------------
 *
 * A message that holds references (each with the count encode took) starts
 * with a ticket, and decode and discard first take it: the first wins, a
 * second decode of the same bytes is refused and touches no count.  The
 * ticket is a word in the arena holding a nonce when the arena is mapped
 * (so a copy of the bytes decoded in another process is refused too), else
 * an entry of this process's set (such a message holds only pipes and
 * private arrays, which never adopt a count in another process).  Taking
 * it is a compare-and-swap of the nonce to 0, then the word is freed: a
 * stale ticket finds its word free or reused, holding another nonce.
 * Nonces are unique: a bijective mix of (pid, counter, key). */
enum { TK_ARENA = 0, TK_LOCAL = 1 };

static uint64_t ticket_counter;

static uint64_t new_nonce(void) {
  uint64_t x = __atomic_add_fetch(&ticket_counter, 1, __ATOMIC_RELAXED) ^
               ((uint64_t)(uint32_t)getpid() << 40);
  x ^= code_key;
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x < 2 ? x + 2 : x;               /* 0: taken, 1: a free slot below */
}

/* The process's set of live local tickets: open addressing, 0 empty,
   1 removed. */
static pthread_mutex_t local_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t *local_set;
static size_t local_cap, local_fill;

static size_t local_slot(uint64_t n, size_t cap) { return (size_t)(n * 0x9E3779B97F4A7C15ull) & (cap - 1); }

static int local_grow(void) {
  size_t cap = local_cap ? local_cap * 2 : 64, i, j;
  uint64_t *t = calloc(cap, sizeof *t);
  if (!t) return -1;
  local_fill = 0;
  for (i = 0; i < local_cap; i++) {
    if (local_set[i] < 2) continue;
    for (j = local_slot(local_set[i], cap); t[j]; j = (j + 1) & (cap - 1)) {}
    t[j] = local_set[i];
    local_fill++;
  }
  free(local_set);
  local_set = t;
  local_cap = cap;
  return 0;
}

static int local_add(uint64_t n) {
  size_t j;
  int r = 0;
  pthread_mutex_lock(&local_mu);
  if ((local_fill + 1) * 2 > local_cap) r = local_grow();
  if (r == 0) {
    for (j = local_slot(n, local_cap); local_set[j] >= 2; j = (j + 1) & (local_cap - 1)) {}
    if (local_set[j] == 0) local_fill++;
    local_set[j] = n;
  }
  pthread_mutex_unlock(&local_mu);
  return r;
}

static int local_take(uint64_t n) {
  size_t j;
  int found = 0;
  pthread_mutex_lock(&local_mu);
  if (local_cap)
    for (j = local_slot(n, local_cap); local_set[j]; j = (j + 1) & (local_cap - 1))
      if (local_set[j] == n) { local_set[j] = 1; found = 1; break; }
  pthread_mutex_unlock(&local_mu);
  return found;
}

static void codec_after_fork(void) { pthread_mutex_init(&local_mu, NULL); }

typedef struct ticket {
  int kind;
  uint64_t where, nonce;
} ticket;

static void put64(char *p, uint64_t v) { memcpy(p, &v, 8); }

/* Make a ticket into out[TICKET_LEN].  0 ok, -1 (the arena is full or out
   of memory). */
static int ticket_make(char *out) {
  uint64_t nonce = new_nonce(), where;
  int kind;
  if (pt_shm_base) {
    pt_off off = pt_shm_alloc(16);
    if (!off) return -1;
    __atomic_store_n(PT_SHM_PTR(uint64_t, off), nonce, __ATOMIC_RELEASE);
    kind = TK_ARENA;
    where = off;
  } else {
    if (local_add(nonce)) return -1;
    kind = TK_LOCAL;
    where = (uint64_t)(uint32_t)getpid();
  }
  out[0] = T_TICKET;
  out[1] = (char)kind;
  put64(out + 2, where);
  put64(out + 10, nonce);
  return 0;
}

/* A ticket word the arena can hold? */
static int ticket_word_ok(uint64_t off) {
  return pt_shm_base && off >= 64 && off % 16 == 0 && off <= pt_shm_config_size() - 16;
}

/* Take the ticket: 1 taken (the references are ours), 0 taken before
   (already decoded or discarded), -1 it cannot be checked here. */
static int ticket_take(const ticket *t) {
  if (t->kind == TK_ARENA) {
    uint64_t expect = t->nonce;
    if (!ticket_word_ok(t->where)) return -1;
    if (!__atomic_compare_exchange_n(PT_SHM_PTR(uint64_t, t->where), &expect, 0, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      return 0;
    pt_shm_free(t->where);
    return 1;
  }
  if (t->where != (uint64_t)(uint32_t)getpid()) return -1;   /* no count here */
  return local_take(t->nonce);
}

/* ---- the name map: C functions and module tables by name ----------------- */

/* registry["procthread.names"] = weak-keyed { [cfunction] = "mod\0key",
   [moduletable] = "mod" }, built from package.loaded. */
#define NAMES_KEY "procthread.names"

/* Record module `mod` (its table at t) in the map: the table, and each C
   function it holds that has no name yet. */
static void add_module(lua_State *L, int map, const char *mod, size_t mlen, int t) {
  lua_pushvalue(L, t);
  lua_rawget(L, map);
  if (!lua_isnil(L, -1)) { lua_pop(L, 1); return; }  /* seen under a name */
  lua_pop(L, 1);
  lua_pushvalue(L, t);
  lua_pushlstring(L, mod, mlen);
  lua_rawset(L, map);                               /* map[tbl] = mod */
  lua_pushnil(L);
  while (lua_next(L, t)) {                          /* ... k v */
    if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
      lua_pushvalue(L, -1);
      lua_rawget(L, map);
      if (lua_isnil(L, -1)) {                       /* first name wins */
        lua_pop(L, 1);
        lua_pushvalue(L, -1);                       /* ... k v v */
        lua_pushlstring(L, mod, mlen);
        lua_pushlstring(L, "\0", 1);
        lua_pushvalue(L, -5);                       /* k */
        lua_concat(L, 3);
        lua_rawset(L, map);
      } else {
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
}

/* The standard libraries come first, so that a C function one of them
   holds is named after it ("string.format"), never after another module
   that keeps a copy of it and that the receiver may not have. */
static void build_names(lua_State *L) {
  static const char *const std[] = {"_G", "string", "table", "math", "io", "os",
                                    "coroutine", "debug", "package", "utf8",
                                    "bit32", "bit", "jit", NULL};
  int map, loaded, i;
  lua_newtable(L);                                  /* map */
  map = lua_gettop(L);
  lua_newtable(L);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, map);
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");    /* map loaded */
  loaded = lua_gettop(L);
  if (lua_istable(L, loaded)) {
    for (i = 0; std[i]; i++) {
      lua_getfield(L, loaded, std[i]);
      if (lua_istable(L, -1)) add_module(L, map, std[i], strlen(std[i]), lua_gettop(L));
      lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, loaded)) {                   /* map loaded mod tbl */
      if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1)) {
        size_t mlen;
        const char *mod = lua_tolstring(L, -2, &mlen);
        add_module(L, map, mod, mlen, lua_gettop(L));
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);                                    /* map */
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, NAMES_KEY);    /* map */
}

/* A stamp of package.loaded: its entries and the objects they hold.  A
   module loaded (or replaced) since the map was built changes it. */
static void push_loaded_stamp(lua_State *L) {
  uint64_t st[2] = {0, 0};
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      st[0]++;
      st[1] += (uint64_t)(uintptr_t)lua_topointer(L, -1) * 0x9E3779B97F4A7C15ull + st[0];
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  lua_pushlstring(L, (const char *)st, sizeof st);
}

/* Push the name map, built again when package.loaded changed since. */
static void push_names(lua_State *L) {
  int fresh;
  push_loaded_stamp(L);                             /* stamp */
  lua_getfield(L, LUA_REGISTRYINDEX, NAMES_KEY ".stamp");
  fresh = lua_rawequal(L, -1, -2);
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, NAMES_KEY);    /* stamp map */
  if (!fresh || lua_isnil(L, -1)) {
    lua_pop(L, 1);
    build_names(L);
    lua_pushvalue(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, NAMES_KEY ".stamp");
  }
  lua_remove(L, -2);                                /* map */
}

/* ---- encoder --------------------------------------------------------------- */

typedef struct taken {
  int type;
  pt_ref ref;
} taken;

typedef struct enc {
  lua_State *L;
  pt_buf *b;
  int seen;          /* stack index: { [obj] = id, [upvalueid] = fid*256+i } */
  int names;         /* stack index of the name map (0 until needed) */
  int rebuilt;       /* the name map was rebuilt during this call */
  int globals;       /* stack index of the sender's globals */
  int nextid;
  int depth;
  taken *refs;
  int nrefs, caprefs;
  char msg[160];
  char path[512];    /* filled from the end while unwinding */
  size_t pathpos;
} enc;

static void prepend(enc *e, const char *seg) {
  size_t n = strlen(seg);
  if (n > e->pathpos) return;                       /* path too long: keep the tail */
  e->pathpos -= n;
  memcpy(e->path + e->pathpos, seg, n);
}

static void prepend_key(enc *e, lua_State *L, int k) {
  char seg[96];
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
  prepend(e, seg);
}

static int fail(enc *e, const char *fmt, const char *arg) {
  snprintf(e->msg, sizeof e->msg, fmt, arg);
  return 0;
}

static int put(enc *e, const void *p, size_t n) {
  if (pt_buf_add(e->b, p, n)) return fail(e, "%s", "out of memory");
  return 1;
}

static int put_byte(enc *e, int c) {
  unsigned char b = (unsigned char)c;
  return put(e, &b, 1);
}

static int put_varint(enc *e, uint64_t v) {
  unsigned char tmp[10];
  int n = 0;
  do {
    tmp[n] = (unsigned char)(v & 0x7f);
    v >>= 7;
    if (v) tmp[n] |= 0x80;
    n++;
  } while (v);
  return put(e, tmp, (size_t)n);
}

static int put_str(enc *e, const char *s, size_t n) {
  return put_varint(e, n) && put(e, s, n);
}

static int enc_value(enc *e, int idx);

/* If the object at idx was seen, write its reference and return 1; else
   give it the next id and return 0. */
static int seen_before(enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->seen)) {          /* made on first need: most messages */
    lua_newtable(L);                    /* hold no table and no function */
    lua_replace(L, e->seen);
  }
  lua_pushvalue(L, idx);
  lua_rawget(L, e->seen);
  if (!lua_isnil(L, -1)) {
    lua_Integer id = lua_tointeger(L, -1);
    lua_pop(L, 1);
    return put_byte(e, T_REF) && put_varint(e, (uint64_t)id) ? 1 : -1;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_pushinteger(L, e->nextid++);
  lua_rawset(L, e->seen);
  return 0;
}

static int names_lookup(enc *e, int idx) {
  lua_State *L = e->L;
  if (!e->names) {
    push_names(L);
    lua_replace(L, e->names = e->globals + 1);
  }
  lua_pushvalue(L, idx);
  lua_rawget(L, e->names);
  if (lua_isnil(L, -1) && !e->rebuilt && lua_iscfunction(L, idx)) {
    lua_pop(L, 1);
    build_names(L);
    lua_replace(L, e->names);
    e->rebuilt = 1;
    lua_pushvalue(L, idx);
    lua_rawget(L, e->names);
  }
  return !lua_isnil(L, -1);                  /* the name stays pushed */
}

static int enc_table(enc *e, int idx) {
  lua_State *L = e->L;
  int r = seen_before(e, idx);
  int hasmeta;
  if (r) return r > 0;
  hasmeta = lua_getmetatable(L, idx);
  if (hasmeta) lua_pop(L, 1);
  if (!put_byte(e, T_TABLE) || !put_byte(e, hasmeta ? 1 : 0)) return 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {                     /* ... k v */
    int k = lua_gettop(L) - 1;
    int kt = lua_type(L, k);
    if (kt == LUA_TTABLE || kt == LUA_TFUNCTION || kt == LUA_TUSERDATA ||
        kt == LUA_TTHREAD || kt == LUA_TLIGHTUSERDATA) {
      if (!enc_value(e, k)) {
        prepend(e, "(a key)");
        lua_pop(L, 2);
        return 0;
      }
    } else if (!enc_value(e, k)) {
      lua_pop(L, 2);
      return 0;
    }
    if (!enc_value(e, k + 1)) {
      prepend_key(e, L, k);
      lua_pop(L, 2);
      return 0;
    }
    lua_pop(L, 1);
  }
  if (!put_byte(e, T_END)) return 0;
  if (hasmeta) {
    lua_getmetatable(L, idx);
    r = enc_value(e, lua_gettop(L));
    lua_pop(L, 1);
    if (!r) { prepend(e, "(metatable)"); return 0; }
  }
  return 1;
}

static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  return pt_buf_add((pt_buf *)ud, p, n);
}

static int enc_function(enc *e, int idx) {
  lua_State *L = e->L;
  lua_Debug ar;
  size_t at, start;
  uint64_t len, chk;
  int r, i, nups, fid;
  (void)fid;
  if (lua_iscfunction(L, idx)) {
    size_t n;
    const char *name;
    if (!names_lookup(e, idx)) {
      lua_pop(L, 1);
      return fail(e, "%s", "cannot copy a C function that is not in a loaded module");
    }
    name = lua_tolstring(L, -1, &n);
    if (strlen(name) >= n) { lua_pop(L, 1); return fail(e, "%s", "cannot copy this C function"); }
    r = put_byte(e, T_CFUNC) && put_str(e, name, strlen(name)) &&
        put_str(e, name + strlen(name) + 1, n - strlen(name) - 1);
    lua_pop(L, 1);
    return r;
  }
  fid = e->nextid;
  r = seen_before(e, idx);
  if (r) return r > 0;
  if (!put_byte(e, T_FUNC)) return 0;
  at = e->b->len;
  if (pt_buf_reserve(e->b, 16)) return fail(e, "%s", "out of memory");
  e->b->len += 16;
  start = e->b->len;
  lua_pushvalue(L, idx);
  r = pt_dump(L, dump_writer, e->b);
  lua_pop(L, 1);
  if (r != 0) return fail(e, "%s", "cannot dump function");
  len = e->b->len - start;
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">u", &ar);
  nups = ar.nups;
  chk = code_check(e->b->data + start, (size_t)len, nups);
  memcpy(e->b->data + at, &len, 8);
  memcpy(e->b->data + at + 8, &chk, 8);
  if (!put_byte(e, nups)) return 0;
  for (i = 1; i <= nups; i++) {
    const char *name;
#ifdef PT_HAVE_UPVALUEID
    void *uid = lua_upvalueid(L, idx, i);
    lua_pushlightuserdata(L, uid);
    lua_rawget(L, e->seen);
    if (!lua_isnil(L, -1)) {                         /* shared upvalue */
      lua_Integer v = lua_tointeger(L, -1);
      lua_pop(L, 1);
      if (!put_byte(e, T_JOIN) || !put_varint(e, (uint64_t)(v >> 8)) ||
          !put_byte(e, (int)(v & 0xff)))
        return 0;
      continue;
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, uid);
    lua_pushinteger(L, (lua_Integer)fid * 256 + i);
    lua_rawset(L, e->seen);
#endif
    name = lua_getupvalue(L, idx, i);
    if (name && strcmp(name, "_ENV") == 0) {     /* the receiver's globals */
      lua_pop(L, 1);
      if (!put_byte(e, T_GLOBALS)) return 0;
      continue;
    }
    r = enc_value(e, lua_gettop(L));
    lua_pop(L, 1);
    if (!r) {
      char seg[96];
      snprintf(seg, sizeof seg, "<upvalue %.60s>", name && *name ? name : "?");
      prepend(e, seg);
      return 0;
    }
  }
  return 1;
}

static int enc_userdata(enc *e, int idx) {
  lua_State *L = e->L;
  int i;
  if (lua_getmetatable(L, idx)) {
    for (i = 0; i < NXTYPES; i++) {
      luaL_getmetatable(L, xtypes[i]->tname);
      if (lua_rawequal(L, -1, -2)) {
        pt_ref ref;
        const char *err;
        lua_pop(L, 2);
        if (e->nrefs == e->caprefs) {
          int cap = e->caprefs ? e->caprefs * 2 : 8;
          taken *t = realloc(e->refs, (size_t)cap * sizeof *t);
          if (!t) return fail(e, "%s", "out of memory");
          e->refs = t; e->caprefs = cap;
        }
        memset(&ref, 0, sizeof ref);
        err = xtypes[i]->encode(L, idx, &ref);
        if (err) return fail(e, "%s", err);
        e->refs[e->nrefs].type = i;
        e->refs[e->nrefs].ref = ref;
        e->nrefs++;
        return put_byte(e, T_XREF) && put_byte(e, i) && put(e, &ref, sizeof ref);
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  return fail(e, "%s", "cannot copy userdata");
}

static int enc_value(enc *e, int idx) {
  lua_State *L = e->L;
  int r;
  if (e->depth >= PT_CODEC_MAXDEPTH)
    return fail(e, "%s", "nesting too deep");
  if (!lua_checkstack(L, 8)) return fail(e, "%s", "Lua stack overflow");
  switch (lua_type(L, idx)) {
    case LUA_TNIL: return put_byte(e, T_NIL);
    case LUA_TBOOLEAN: return put_byte(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE);
    case LUA_TNUMBER:
      if (pt_isinteger(L, idx)) {
        int64_t v = (int64_t)lua_tointeger(L, idx);
        return put_byte(e, T_INT) && put(e, &v, 8);
      } else {
        double d = (double)lua_tonumber(L, idx);
        return put_byte(e, T_DOUBLE) && put(e, &d, 8);
      }
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      return put_byte(e, T_STRING) && put_str(e, s, n);
    }
    case LUA_TTABLE:
      if (lua_rawequal(L, idx, e->globals)) return put_byte(e, T_GLOBALS);
      if (names_lookup(e, idx)) {
        size_t n;
        const char *name = lua_tolstring(L, -1, &n);
        r = put_byte(e, T_MODULE) && put_str(e, name, n);
        lua_pop(L, 1);
        return r;
      }
      lua_pop(L, 1);
      e->depth++;
      r = enc_table(e, idx);
      e->depth--;
      return r;
    case LUA_TFUNCTION:
      e->depth++;
      r = enc_function(e, idx);
      e->depth--;
      return r;
    case LUA_TUSERDATA:
      return enc_userdata(e, idx);
    case LUA_TTHREAD:
      return fail(e, "%s", "cannot copy a coroutine");
    case LUA_TLIGHTUSERDATA:
      return fail(e, "%s", "cannot copy light userdata");
    default:
      return fail(e, "cannot copy a %s", luaL_typename(L, idx));
  }
}

/* Encode n values from idx.  Value i is named what[i] (what alone when
   !indexed); with fn set, value 1 is named "fn" and value i+1 args[i]. */
static int encode(lua_State *L, int idx, int n, const char *what, int indexed,
                  int fn, pt_buf *out, char *err, size_t errlen) {
  enc e;
  size_t oldlen = out->len;
  int top = lua_gettop(L), i, ok = 1;
  idx = pt_absindex(L, idx);
  memset(&e, 0, sizeof e);
  e.L = L; e.b = out; e.nextid = 1;
  e.pathpos = sizeof e.path - 1;
  luaL_checkstack(L, 12, "procthread codec");
  lua_pushnil(L);                                  /* slot for the seen table */
  e.seen = lua_gettop(L);
  pt_pushglobals(L);
  e.globals = lua_gettop(L);
  lua_pushnil(L);                                  /* slot for the name map */
  for (i = 0; i < n && ok; i++) {
    ok = enc_value(&e, idx + i);
    if (!ok) {
      char seg[32];
      int k = fn ? i : i + 1;
      if (fn) what = i == 0 ? "fn" : "args";
      if (indexed && k > 0) {
        snprintf(seg, sizeof seg, "[%d]", k);
        prepend(&e, seg);
      }
      e.path[sizeof e.path - 1] = '\0';
      snprintf(err, errlen, "%s%s: %s", what, e.path + e.pathpos, e.msg);
    }
  }
  lua_settop(L, top);
  if (ok && e.nrefs > 0) {            /* the ticket goes first */
    char tk[TICKET_LEN];
    ok = pt_buf_reserve(out, TICKET_LEN) == 0 && ticket_make(tk) == 0;
    if (ok) {
      memmove(out->data + oldlen + TICKET_LEN, out->data + oldlen, out->len - oldlen);
      memcpy(out->data + oldlen, tk, TICKET_LEN);
      out->len += TICKET_LEN;
    } else {
      snprintf(err, errlen, "%s: %s", what, pt_shm_base ? pt_shm_full_msg() : "out of memory");
    }
  }
  if (!ok) {
    for (i = 0; i < e.nrefs; i++) xtypes[e.refs[i].type]->release(&e.refs[i].ref);
    out->len = oldlen;
  }
  free(e.refs);
  return ok;
}

int pt_encode(lua_State *L, int idx, int n, const char *what, pt_buf *out,
              char *err, size_t errlen) {
  pthread_once(&key_once, make_key);
  return encode(L, idx, n, what, 1, 0, out, err, errlen);
}

int pt_encode_call(lua_State *L, int idx, int n, pt_buf *out, char *err,
                   size_t errlen) {
  pthread_once(&key_once, make_key);
  return encode(L, idx, n, "args", 1, 1, out, err, errlen);
}

/* ---- reader shared by the decoder and the walker ------------------------- */

typedef struct rd {
  const char *p, *end;
  int bad;
} rd;

static int get(rd *r, void *dst, size_t n) {
  if ((size_t)(r->end - r->p) < n) { r->bad = 1; return 0; }
  memcpy(dst, r->p, n);
  r->p += n;
  return 1;
}

static int get_byte(rd *r) {
  unsigned char c;
  return get(r, &c, 1) ? c : -1;
}

static int get_varint(rd *r, uint64_t *v) {
  uint64_t x = 0;
  int shift = 0;
  for (;;) {
    int c = get_byte(r);
    if (c < 0 || shift > 63) { r->bad = 1; return 0; }
    x |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) break;
    shift += 7;
  }
  *v = x;
  return 1;
}

static const char *get_str(rd *r, size_t *n) {
  uint64_t len;
  const char *s;
  if (!get_varint(r, &len) || len > (uint64_t)(r->end - r->p)) {
    r->bad = 1;
    return NULL;
  }
  s = r->p;
  r->p += len;
  *n = (size_t)len;
  return s;
}

/* ---- walker: check a buffer, or drop the references it holds -------------
 *
 * One pass over the values, as the decoder will read them: every tag,
 * length, id and upvalue link is checked, and each object gets its id in
 * the same order (kinds[id]: 0 a table, 1 + upvalue count a function), so
 * that nothing the decoder then does can fail on damaged bytes.  With
 * `from` set, each reference at or after it is released on the way (a
 * buffer that will never be decoded; a damaged or cut one releases the
 * whole references before the damage). */

typedef struct walker {
  rd r;
  const char *from;      /* release references at or after this; NULL: none */
  pt_buf kinds;
  int nrefs;             /* references met */
  double num;            /* the last double read */
} walker;

#define K_TABLE 0

static int new_id(walker *w, int kind) {
  unsigned char k = (unsigned char)kind;
  return pt_buf_add(&w->kinds, &k, 1) == 0;
}

/* The kind of object `id` names: K_TABLE, 1 + nups, or -1 if none yet. */
static int id_kind(const walker *w, uint64_t id) {
  if (id == 0 || id > w->kinds.len) return -1;
  return (unsigned char)w->kinds.data[id - 1];
}

static int walk(walker *w, int depth);

static int walk_table(walker *w, int depth) {
  rd *r = &w->r;
  int flags = get_byte(r);
  if (flags < 0 || (flags & ~1) || !new_id(w, K_TABLE)) return 0;
  for (;;) {
    int kt;
    if (r->p < r->end && *r->p == T_END) { r->p++; break; }
    kt = walk(w, depth + 1);
    if (!kt || kt == T_NIL || (kt == T_DOUBLE && w->num != w->num)) return 0;
    if (!walk(w, depth + 1)) return 0;
  }
  if (flags & 1) {               /* a metatable: a table, or may be one */
    int mt = walk(w, depth + 1);
    if (mt != T_TABLE && mt != T_GLOBALS && mt != T_MODULE) return 0;
  }
  return T_TABLE;
}

static int walk_function(walker *w, int depth) {
  rd *r = &w->r;
  uint64_t len, chk, v;
  const char *code;
  int i, nups;
  if (!get(r, &len, 8) || !get(r, &chk, 8) || len > (uint64_t)(r->end - r->p)) return 0;
  code = r->p;
  r->p += len;
  if ((nups = get_byte(r)) < 0) return 0;
  if (w->from == NULL && code_check(code, (size_t)len, nups) != chk) return 0;
  if (!new_id(w, 1 + nups)) return 0;
  for (i = 0; i < nups; i++) {
    if (r->p < r->end && *r->p == T_JOIN) {
      int k, idx;
      r->p++;
      if (!get_varint(r, &v) || (idx = get_byte(r)) < 1) return 0;
#ifndef PT_HAVE_UPVALUEID
      return 0;                  /* this Lua cannot join upvalues */
#endif
      k = id_kind(w, v);
      if (k < 1 || idx > k - 1) return 0;
    } else if (!walk(w, depth + 1)) {
      return 0;
    }
  }
  return T_FUNC;
}

/* Walk one value: its tag (T_TABLE for a reference to a table, T_FUNC for
   one to a function), or 0 when the bytes are not a value. */
static int walk(walker *w, int depth) {
  rd *r = &w->r;
  const char *at = r->p;
  int t = get_byte(r), k;
  uint64_t v;
  size_t n;
  if (t < 0 || depth > PT_CODEC_MAXDEPTH + 1) return 0;
  switch (t) {
    case T_NIL: case T_FALSE: case T_TRUE: case T_GLOBALS: return t;
    case T_INT: { char x[8]; return get(r, x, 8) ? t : 0; }
    case T_DOUBLE: return get(r, &w->num, 8) ? t : 0;
    case T_STRING: return get_str(r, &n) ? t : 0;
    case T_MODULE: return get_str(r, &n) && n > 0 ? t : 0;
    case T_CFUNC: return get_str(r, &n) && n > 0 && get_str(r, &n) ? t : 0;
    case T_REF:
      if (!get_varint(r, &v) || (k = id_kind(w, v)) < 0) return 0;
      return k == K_TABLE ? T_TABLE : T_FUNC;
    case T_TABLE: return walk_table(w, depth);
    case T_FUNC: return walk_function(w, depth);
    case T_XREF: {
      int type = get_byte(r);
      pt_ref ref;
      if (type < 0 || type >= NXTYPES || !get(r, &ref, sizeof ref)) return 0;
      w->nrefs++;
      if (w->from && at >= w->from) xtypes[type]->release(&ref);
      return t;
    }
    default:
      r->bad = 1;
      return 0;
  }
}

static void walker_init(walker *w, const char *data, size_t len, const char *from) {
  memset(w, 0, sizeof *w);
  w->r.p = data; w->r.end = data + len;
  w->from = from;
  pt_buf_init(&w->kinds);
}

/* Read the ticket at the start of a buffer, if there is one (1), moving
   past it.  0: none; -1: a cut or damaged one. */
static int read_ticket(rd *r, ticket *t) {
  int kind;
  if (r->p >= r->end || *r->p != T_TICKET) return 0;
  if (r->end - r->p < TICKET_LEN) return -1;
  kind = (unsigned char)r->p[1];
  if (kind != TK_ARENA && kind != TK_LOCAL) return -1;
  t->kind = kind;
  memcpy(&t->where, r->p + 2, 8);
  memcpy(&t->nonce, r->p + 10, 8);
  r->p += TICKET_LEN;
  return 1;
}

/* Walk values from w's position to the end: 1 when all are whole. */
static int walk_all(walker *w) {
  while (w->r.p < w->r.end)
    if (!walk(w, 0)) return 0;
  return 1;
}

/* Safe on any bytes, a cut message included: takes the ticket (nothing is
   done when it was taken before) and releases every whole reference up
   to the first damage, never reading out of bounds. */
void pt_discard(const char *data, size_t len) {
  walker w;
  ticket t;
  walker_init(&w, data, len, data);
  if (read_ticket(&w.r, &t) == 1 && ticket_take(&t) != 1) return;
  (void)walk_all(&w);
  pt_buf_free(&w.kinds);
}


/* ---- decoder ------------------------------------------------------------- */

typedef struct dec {
  lua_State *L;
  rd r;
  int objs;          /* stack index: { [id] = table or function } */
  int nextid;
  int depth;
  const char *err;   /* a message other than "corrupt message" */
  const char *errat; /* where the failing value started */
  char errbuf[400];
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
static int corrupt(dec *d) {
  d->r.bad = 1;
  d->errat = d->r.p;
  return 0;
}

/* Push package.loaded[name], loading the module with require when it is
   not loaded yet.  Raw lookups only: no metamethod of the receiver runs. */
static int dec_module(dec *d, const char *name, size_t n) {
  lua_State *L = d->L;
  int top;
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  if (lua_istable(L, -1)) {
    lua_pushlstring(L, name, n);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (!lua_isnil(L, -1)) return 1;
  }
  lua_pop(L, 1);
  top = lua_gettop(L);
  pt_pushglobals(L);
  lua_pushliteral(L, "require");
  lua_rawget(L, -2);
  lua_remove(L, -2);
  lua_pushlstring(L, name, n);
  if (lua_pcall(L, 1, 1, 0) != 0) {
    snprintf(d->errbuf, sizeof d->errbuf,
             "a module named in the message cannot be loaded here: '%.*s': %.300s",
             (int)(n > 80 ? 80 : n), name, pt_tomessage(L, -1));
    lua_settop(L, top);
    d->err = d->errbuf;
    return 0;
  }
  return 1;
}
static int dec_table(dec *d) {
  lua_State *L = d->L;
  int flags = get_byte(&d->r), t;
  if (flags < 0 || (flags & ~1)) return corrupt(d);
  lua_newtable(L);
  t = lua_gettop(L);
  dec_remember(d);
  for (;;) {
    if (d->r.p < d->r.end && *d->r.p == T_END) { d->r.p++; break; }
    if (!dec_value(d)) return 0;
    if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER &&
                             lua_tonumber(L, -1) != lua_tonumber(L, -1)))
      return corrupt(d);                            /* nil or NaN key */
    if (!dec_value(d)) return 0;
    lua_rawset(L, t);
  }
  if (flags & 1) {
    if (!dec_value(d)) return 0;
    if (!lua_istable(L, -1)) return corrupt(d);
    lua_setmetatable(L, t);
  }
  return 1;
}

static int dec_function(dec *d) {
  lua_State *L = d->L;
  uint64_t len, chk;
  int nups, i, f;
  if (!get(&d->r, &len, 8) || !get(&d->r, &chk, 8) ||
      len > (uint64_t)(d->r.end - d->r.p))
    return corrupt(d);
  (void)chk;                          /* checked by the walker */
  if (pt_loadbuffer(L, d->r.p, (size_t)len, "=(procthread)") != 0) {
    lua_pop(L, 1);
    return corrupt(d);
  }
  d->r.p += len;
  f = lua_gettop(L);
  dec_remember(d);
  if ((nups = get_byte(&d->r)) < 0) return corrupt(d);
  for (i = 1; i <= nups; i++) {
    if (d->r.p < d->r.end && *d->r.p == T_JOIN) {
#ifdef PT_HAVE_UPVALUEID
      uint64_t fid;
      int idx;
      d->r.p++;
      if (!get_varint(&d->r, &fid) || fid == 0 || fid >= (uint64_t)d->nextid ||
          (idx = get_byte(&d->r)) < 1)
        return corrupt(d);
      lua_rawgeti(L, d->objs, (int)fid);
      if (!lua_isfunction(L, -1) || lua_iscfunction(L, -1) ||
          !lua_getupvalue(L, -1, idx) || !lua_getupvalue(L, f, i))
        return corrupt(d);
      lua_pop(L, 2);
      lua_upvaluejoin(L, f, i, lua_gettop(L), idx);
      lua_pop(L, 1);
      continue;
#else
      return corrupt(d);
#endif
    }
    if (!dec_value(d)) return 0;
    if (!lua_setupvalue(L, f, i)) return corrupt(d);
  }
  return 1;
}

static int dec_value(dec *d) {
  lua_State *L = d->L;
  const char *at = d->r.p;
  int t, ok;
  if (d->depth >= PT_CODEC_MAXDEPTH + 2) return corrupt(d);
  if (!lua_checkstack(L, 8)) {           /* the references from here on are released */
    d->err = "too many values in message";
    d->errat = at;
    return 0;
  }
  t = get_byte(&d->r);
  switch (t) {
    case T_NIL: lua_pushnil(L); return 1;
    case T_FALSE: lua_pushboolean(L, 0); return 1;
    case T_TRUE: lua_pushboolean(L, 1); return 1;
    case T_GLOBALS: pt_pushglobals(L); return 1;
    case T_INT: {
      int64_t v;
      if (!get(&d->r, &v, 8)) return 0;
      lua_pushinteger(L, (lua_Integer)v);
      return 1;
    }
    case T_DOUBLE: {
      double v;
      if (!get(&d->r, &v, 8)) return 0;
      lua_pushnumber(L, (lua_Number)v);
      return 1;
    }
    case T_STRING: {
      size_t n;
      const char *s = get_str(&d->r, &n);
      if (!s) return 0;
      lua_pushlstring(L, s, n);
      return 1;
    }
    case T_REF: {
      uint64_t id;
      if (!get_varint(&d->r, &id) || id == 0 || id >= (uint64_t)d->nextid)
        return corrupt(d);
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
      const char *s = get_str(&d->r, &n);
      if (!s) return 0;
      if (n == 2 && memcmp(s, "_G", 2) == 0) { pt_pushglobals(L); return 1; }
      if (!dec_module(d, s, n)) { d->errat = at; return 0; }
      return 1;
    }
    case T_CFUNC: {
      size_t mn, kn;
      const char *m = get_str(&d->r, &mn), *k = m ? get_str(&d->r, &kn) : NULL;
      if (!k) return 0;
      if (mn == 2 && memcmp(m, "_G", 2) == 0) pt_pushglobals(L);
      else if (!dec_module(d, m, mn)) { d->errat = at; return 0; }
      if (!lua_istable(L, -1)) return corrupt(d);
      lua_pushlstring(L, k, kn);
      lua_rawget(L, -2);
      lua_remove(L, -2);
      if (!lua_iscfunction(L, -1)) {
        d->err = "a C function named in the message does not exist here";
        d->errat = at;
        return 0;
      }
      return 1;
    }
    case T_XREF: {
      int type = get_byte(&d->r);
      pt_ref ref;
      const char *err;
      if (type < 0 || type >= NXTYPES || !get(&d->r, &ref, sizeof ref))
        return corrupt(d);
      luaL_getmetatable(L, xtypes[type]->tname);
      if (lua_isnil(L, -1)) {            /* a new thread state: load the module */
        lua_pop(L, 1);
        if (!dec_module(d, "procthread.core", 15)) { d->errat = at; return 0; }
      }
      lua_pop(L, 1);
      err = xtypes[type]->decode(L, &ref);
      if (err) {            /* the count was not adopted: release from here */
        d->err = err;
        d->errat = at;
        return 0;
      }
      return 1;
    }
    default:
      return corrupt(d);
  }
}

/* Release the references of data from `from` on (those not adopted). */
static void release_from(const char *data, size_t len, const char *from) {
  walker w;
  walker_init(&w, data, len, from);
  if (read_ticket(&w.r, &(ticket){0, 0, 0}) >= 0) (void)walk_all(&w);
  pt_buf_free(&w.kinds);
}

/* Check the whole buffer before anything is made: "corrupt message" or
   NULL; *has_ticket and *t say whether it holds a ticket. */
static const char *check_message(const char *data, size_t len, int *has_ticket, ticket *t) {
  walker w;
  int ok;
  walker_init(&w, data, len, NULL);
  *has_ticket = read_ticket(&w.r, t);
  ok = *has_ticket >= 0 && walk_all(&w) && (w.nrefs == 0 || *has_ticket == 1);
  pt_buf_free(&w.kinds);
  return ok ? NULL : "corrupt message";
}

int pt_decode(lua_State *L, const char *data, size_t len) {
  dec d;
  ticket t;
  int top = lua_gettop(L), n = 0, has_ticket;
  const char *bad;
  pthread_once(&key_once, make_key);
  luaL_checkstack(L, 4, "procthread codec");
  bad = check_message(data, len, &has_ticket, &t);
  if (!bad && has_ticket == 1) {
    int r = ticket_take(&t);
    if (r == 0) bad = "decode: this message was already decoded (or discarded)";
    else if (r < 0 && t.kind == TK_ARENA)
      bad = "decode: the message's shared memory is not mapped in this process";
  }
  if (bad) { lua_pushstring(L, bad); return -1; }
  memset(&d, 0, sizeof d);
  d.L = L;
  d.r.p = data + (has_ticket == 1 ? TICKET_LEN : 0); d.r.end = data + len;
  d.nextid = 1;
  lua_pushnil(L);                        /* slot for the objects by id */
  d.objs = lua_gettop(L);
  while (d.r.p < d.r.end) {
    d.errat = d.r.p;
    if (!dec_value(&d)) {
      lua_settop(L, top);
      /* drop the references not adopted: the failing value on */
      release_from(data, len, d.errat);
      if (d.err) lua_pushstring(L, d.err);
      else lua_pushliteral(L, "corrupt message");
      return -1;
    }
    n++;
  }
  lua_remove(L, d.objs);
  return n;
}

/* ---- Lua functions: pt.encode / pt.decode (for pools and tests) ---------- */

static int l_encode(lua_State *L) {
  pt_buf b;
  char err[640];
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
  pthread_once(&key_once, make_key);
  pt_atfork_child(codec_after_fork);
  pt_setfuncs(L, fns);
}
