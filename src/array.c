/* array.c - pt.array(n [, "private" | "shared"]): n doubles, zero filled.
 *
 * A private array is ordinary memory of this process (a malloc'd,
 * reference-counted block): the threads it is given to work on the same
 * numbers; a forked child works on its copy-on-write copy.  A shared array
 * lives in the shared arena and is the same memory for every process.
 * Elements are read and written with single aligned 8-byte accesses, so a
 * reader never sees a torn number.  Both kinds share the metatable
 * "procthread.Array". */
#include "pt.h"
#include "shm.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ANAME "procthread.Array"
#define KIND_SARRAY 2
#define SARR_MAGIC 0x61727231u                /* "arr1" */
#define REF_SHARED 1                          /* pt_ref.b of a shared array */

/* The block, in the arena (shared) or from malloc (private). */
typedef struct ablock {
  uint32_t magic, kind;
  uint64_t refs;
  uint64_t n;
  double d[1];
} ablock;

#define BLOCK_SIZE(n) (offsetof(ablock, d) + (size_t)(n) * sizeof(double))

typedef struct ahandle {
  pt_shm_handle h;                            /* shared: the arena count */
  int shared;
  ablock *priv;                               /* private: the block */
  pid_t ppid;                                 /* private: who holds the count */
  uint64_t n;
  double *data;                               /* NULL once released */
} ahandle;

static void sarr_drop(pt_off off) {
  if (off && pt_shm_base && pt_shm_decref(&PT_SHM_PTR(ablock, off)->refs)) {
    PT_SHM_PTR(ablock, off)->magic = 0;
    pt_shm_free(off);
  }
}

/* Private blocks of this process, in a registry: a reference in a message
   names a block by id, and only a live block of this process is ever
   adopted, so a forged or stale reference is an error, never a pointer.
   (A forked child has a copy of the list, of its own blocks' copies.) */
typedef struct pblock {
  uint64_t id;
  struct pblock *prev, *next;
  ablock a;                                   /* last: d[] follows */
} pblock;

static pthread_mutex_t preg_mu = PTHREAD_MUTEX_INITIALIZER;
static pblock *preg_head;
static uint64_t preg_next = 2;                /* 0 and REF_SHARED are taken */

#define PBLOCK(b) ((pblock *)(void *)((char *)(b) - offsetof(pblock, a)))

static void preg_after_fork(void) {
  pthread_mutex_init(&preg_mu, NULL);         /* a holder did not come along */
}

static ablock *parr_new(uint64_t n) {
  pblock *p = calloc(1, offsetof(pblock, a) + BLOCK_SIZE(n));
  if (!p) return NULL;
  p->a.kind = KIND_SARRAY;
  p->a.refs = 1;
  p->a.n = n;
  pthread_mutex_lock(&preg_mu);
  p->id = preg_next++;
  p->next = preg_head;
  if (preg_head) preg_head->prev = p;
  preg_head = p;
  pthread_mutex_unlock(&preg_mu);
  return &p->a;
}

/* The live block with this id, or NULL (preg_mu held). */
static ablock *parr_find(uint64_t id) {
  pblock *p;
  for (p = preg_head; p; p = p->next)
    if (p->id == id) return &p->a;
  return NULL;
}

static void parr_drop(ablock *b) {
  pblock *p;
  if (!b || !pt_shm_decref(&b->refs)) return;
  p = PBLOCK(b);
  pthread_mutex_lock(&preg_mu);
  if (p->prev) p->prev->next = p->next; else preg_head = p->next;
  if (p->next) p->next->prev = p->prev;
  pthread_mutex_unlock(&preg_mu);
  free(p);
}

static ahandle *toarray(lua_State *L, int i) {
  ahandle *a = lua_touserdata(L, i);
  if (a && pt_rawlen(L, i) == sizeof(ahandle) && a->h.magic == PT_HANDLE_MAGIC &&
      a->h.kind == KIND_SARRAY)
    return a;
  return NULL;
}

static ahandle *checkarray(lua_State *L, int i) {
  ahandle *a = toarray(L, i);
  if (!a) luaL_argerror(L, i, lua_pushfstring(L, "array expected, got %s", luaL_typename(L, i)));
  if (!a->data) luaL_argerror(L, i, "array is released");
  return a;
}

static ahandle *push_blank(lua_State *L) {
  ahandle *a = pt_newuserdata(L, sizeof(ahandle));
  memset(a, 0, sizeof *a);
  a->h.magic = PT_HANDLE_MAGIC;
  a->h.kind = KIND_SARRAY;
  luaL_getmetatable(L, ANAME);
  lua_setmetatable(L, -2);
  return a;
}

static void adopt_shared(ahandle *a, pt_off off) {
  ablock *b = PT_SHM_PTR(ablock, off);
  a->shared = 1;
  a->n = b->n;
  a->data = b->d;
  pt_shm_track(&a->h, off, KIND_SARRAY, sarr_drop);
}

static void adopt_private(ahandle *a, ablock *b) {
  a->shared = 0;
  a->priv = b;
  a->ppid = getpid();
  a->n = b->n;
  a->data = b->d;
}

static void release(ahandle *a) {
  a->data = NULL;
  if (a->shared) {
    pt_shm_release(&a->h);
  } else if (a->priv) {
    ablock *b = a->priv;
    a->priv = NULL;
    if (a->ppid == getpid()) parr_drop(b);
  }
}

int pt_array_release(lua_State *L, int idx) {
  ahandle *a = toarray(L, idx);
  if (!a) return 0;
  release(a);
  return 1;
}

/* The index at 2, checked against 1..n. */
static uint64_t checkindex(lua_State *L, ahandle *a) {
  lua_Integer i = 0;
  if (lua_type(L, 2) != LUA_TNUMBER)
    luaL_error(L, "array index must be an integer, got %s", luaL_typename(L, 2));
#if LUA_VERSION_NUM >= 503
  {
    int ok;
    i = lua_tointegerx(L, 2, &ok);
    if (!ok) luaL_error(L, "array index must be an integer, got %f", (double)lua_tonumber(L, 2));
  }
#else
  {
    lua_Number x = lua_tonumber(L, 2);
    if (!(x >= -9.2e18 && x <= 9.2e18) || (lua_Number)(i = (lua_Integer)x) != x)
      luaL_error(L, "array index must be an integer, got %f", (double)x);
  }
#endif
  if (i < 1 || (uint64_t)i > a->n)
    luaL_error(L, "array index %d out of range (1..%d)", (int)(i > 2000000000 ? 2000000000 : i < -2000000000 ? -2000000000 : i),
               (int)(a->n > 2000000000 ? 2000000000 : a->n));
  return (uint64_t)i - 1;
}

static int l_index(lua_State *L) {
  ahandle *a = checkarray(L, 1);
  uint64_t i = checkindex(L, a);
  double v;
  __atomic_load(&a->data[i], &v, __ATOMIC_RELAXED);
  lua_pushnumber(L, v);
  return 1;
}

static int l_newindex(lua_State *L) {
  ahandle *a = checkarray(L, 1);
  uint64_t i = checkindex(L, a);
  double v;
  if (lua_type(L, 3) != LUA_TNUMBER)
    return luaL_error(L, "array values are numbers, got %s", luaL_typename(L, 3));
  v = (double)lua_tonumber(L, 3);
  __atomic_store(&a->data[i], &v, __ATOMIC_RELAXED);
  return 0;
}

static int l_len(lua_State *L) {
  ahandle *a = checkarray(L, 1);
  lua_pushinteger(L, (lua_Integer)a->n);
  return 1;
}

static int l_gc(lua_State *L) {
  ahandle *a = toarray(L, 1);
  if (a) release(a);
  return 0;
}

static int l_eq(lua_State *L) {
  ahandle *a = toarray(L, 1), *b = toarray(L, 2);
  lua_pushboolean(L, a && b && a->data && a->data == b->data);
  return 1;
}

static int l_tostring(lua_State *L) {
  ahandle *a = toarray(L, 1);
  if (a && a->data)
    lua_pushfstring(L, ANAME " (%s, %d): %p", a->shared ? "shared" : "private",
                    (int)(a->n > 2000000000 ? 2000000000 : a->n), (void *)a->data);
  else
    lua_pushstring(L, ANAME " (released)");
  return 1;
}

/* pt.array(n [, "private" | "shared"]) -> array | nil, err, errno */
static int l_array(lua_State *L) {
  static const char *const kinds[] = {"private", "shared", NULL};
  lua_Number nn = luaL_checknumber(L, 1);
  int shared = luaL_checkoption(L, 2, "private", kinds);
  uint64_t n;
  ahandle *a;
  if (!(nn >= 0 && nn <= 9007199254740992.0) || (lua_Number)(uint64_t)nn != nn)
    return luaL_argerror(L, 1, "size must be an integer >= 0");
  n = (uint64_t)nn;
  if (n > (((uint64_t)1 << 46) / sizeof(double)))
    return luaL_argerror(L, 1, "size too large");
  a = push_blank(L);
  if (shared) {
    pt_off off;
    ablock *b;
    if (pt_shm_ensure() != 0) return pt_push_shm_error(L, errno);
    off = pt_shm_alloc(BLOCK_SIZE(n));
    if (!off) {                               /* garbage may hold the space */
      lua_gc(L, LUA_GCCOLLECT, 0);
      off = pt_shm_alloc(BLOCK_SIZE(n));
    }
    if (!off) return luaL_error(L, "%s", pt_shm_full_msg());
    b = PT_SHM_PTR(ablock, off);
    b->kind = KIND_SARRAY;
    b->refs = 1;
    b->n = n;
    memset(b->d, 0, (size_t)n * sizeof(double));
    b->magic = SARR_MAGIC;
    adopt_shared(a, off);
  } else {
    ablock *b = parr_new(n);
    if (!b) return pt_push_oserror(L, "pt.array", ENOMEM);
    adopt_private(a, b);
  }
  return 1;
}

/* ---- crossing between states (codec) ------------------------------------------- */

static const char *x_encode(lua_State *L, int idx, pt_ref *ref) {
  ahandle *a = toarray(L, idx);
  if (!a) return "not an array";
  if (!a->data) return "array is released";
  if (a->shared) {
    pt_shm_incref(&PT_SHM_PTR(ablock, a->h.off)->refs);
    ref->a = a->h.off;
    ref->b = REF_SHARED;
  } else {
    pt_shm_incref(&a->priv->refs);
    ref->a = (uint64_t)getpid();
    ref->b = PBLOCK(a->priv)->id;
  }
  return NULL;
}

static int valid_shared(const pt_ref *ref) {
  uint64_t size;
  if (!pt_shm_base) return 0;
  size = pt_shm_config_size();
  if (ref->a < 64 || ref->a % 16 || ref->a > size - sizeof(ablock)) return 0;
  return PT_SHM_PTR(ablock, ref->a)->magic == SARR_MAGIC;
}

static void x_release(const pt_ref *ref) {
  if (ref->b == REF_SHARED) {
    if (valid_shared(ref)) sarr_drop(ref->a);
  } else if (ref->a == (uint64_t)getpid()) {
    ablock *b;
    pthread_mutex_lock(&preg_mu);
    b = parr_find(ref->b);
    pthread_mutex_unlock(&preg_mu);
    if (b) parr_drop(b);          /* the message's count keeps it listed */
  }
}

static const char *x_decode(lua_State *L, const pt_ref *ref) {
  ahandle *a;
  ablock *b;
  if (ref->b == REF_SHARED) {
    if (!valid_shared(ref)) return "corrupt message (bad shared array reference)";
    a = push_blank(L);
    adopt_shared(a, ref->a);
    return NULL;
  }
  if (ref->a != (uint64_t)getpid()) return "private array cannot cross to another process";
  pthread_mutex_lock(&preg_mu);
  b = parr_find(ref->b);
  pthread_mutex_unlock(&preg_mu);
  if (!b) return "corrupt message (bad private array reference)";
  a = push_blank(L);
  adopt_private(a, b);
  return NULL;
}

const pt_xtype pt_xtype_array = {ANAME, x_encode, x_release, x_decode};

void pt_open_array(lua_State *L) {
  static const luaL_Reg meta[] = {
    {"__index", l_index}, {"__newindex", l_newindex}, {"__len", l_len},
    {"__gc", l_gc}, {"__eq", l_eq}, {"__tostring", l_tostring},
#if LUA_VERSION_NUM >= 504
    {"__close", l_gc},
#endif
    {NULL, NULL}};
  pt_shm_init_process();
  pt_atfork_child(preg_after_fork);
  if (luaL_newmetatable(L, ANAME)) {
    pt_setfuncs(L, meta);
    lua_pushstring(L, ANAME);
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_array);
  lua_setfield(L, -2, "array");
}
