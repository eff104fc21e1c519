/* array.c - pt.array(n [, "private" | "shared"]): n doubles, zero filled.
 *
 * A private array is ordinary memory of this process (a malloc'd,
 * reference-counted block): the threads it is given to work on the same
 * numbers; a forked child works on its copy-on-write copy.  A shared array
 * lives in the shared arena and is the same memory for every process.
 * Elements are read and written with single aligned 8-byte accesses, so a
 * reader never sees a torn number.  Both kinds share the metatable
 * "procthread.Array". */
#include "arena_lua.h"
#include "handle.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ANAME "procthread.Array"
#define SARR_MAGIC 0x61727231u                /* "arr1" */
#define CELL_MAGIC 0x7074666c69676874ULL      /* "ptflight" */
#define REF_SHARED (1ULL << 63)               /* in pt_ref.b: a shared array */
#define NUMLEN 32                             /* a formatted count */

/* The block, in the arena (shared) or from malloc (private). */
typedef struct ablock {
  uint32_t magic, kind;
  uint64_t refs;            /* shared: every count; private: local handles */
  uint64_t n;
  uint64_t gen;             /* shared: see pt_shm_new_gen */
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

/* A shared array's count: dropped only while the array is the one the
   handle adopted (gen); the last one frees it. */
static void sarr_drop(pt_off off, uint64_t gen) {
  ablock *b;
  if (!off || !pt_shm_mapped()) return;
  b = PT_SHM_PTR(ablock, off);
  if (!pt_shm_gen_ok(&b->gen, gen) || !pt_shm_decref(&b->refs)) return;
  pt_shm_gen_kill(&b->gen);
  __atomic_store_n(&b->magic, 0, __ATOMIC_RELAXED);
  pt_shm_free(off);
}

/* pt_shm_fork's count for a child, only while gen holds. */
static int sarr_take(pt_off off, uint64_t gen) {
  ablock *b = PT_SHM_PTR(ablock, off);
  if (!pt_shm_gen_ok(&b->gen, gen)) return 0;
  pt_shm_incref(&b->refs);
  return 1;
}

/* Private blocks of this process, in a registry: a reference in a message
   names a block by id, and only a live block of this process is ever
   adopted, so a forged or stale reference is an error, never a pointer.
   (A forked child has a copy of the list, of its own blocks' copies.)

   Lifetime.  `refs` counts this process's handles only.  Messages in
   flight are counted in a cell in the shared arena (made when the block is
   first sent), so that whichever process meets the message -- a thread of
   this one decoding it, another process refusing it, anyone discarding
   it -- can drop that count.  A block goes when it has neither handles
   nor messages in flight: at once when its last handle goes, else at the
   next sweep of this process (every pt.array, release and send).  All of
   it under preg_mu, the arena cells' counts apart (atomic). */
typedef struct pcell {
  uint64_t magic, pid, id;
  uint64_t inflight;                          /* atomic: count | CELL_ORPHAN */
} pcell;

/* In inflight: the process that made the cell left with messages still in
   flight; whoever drops the last of them frees the cell. */
#define CELL_ORPHAN (1ULL << 63)

typedef struct pblock {
  uint64_t id;
  struct pblock *prev, *next;
  pt_off cell;                                /* 0: never sent from here */
  ablock a;                                   /* last: d[] follows */
} pblock;

static pthread_mutex_t preg_mu = PTHREAD_MUTEX_INITIALIZER;
static pblock *preg_head;
static uint64_t preg_next = 1;                /* 0 is none */
static uint64_t preg_zombies;                 /* listed blocks without handles */

#define PBLOCK(b) ((pblock *)(void *)((char *)(b) - offsetof(pblock, a)))
#define CELL(off) PT_SHM_PTR(pcell, off)

static uint64_t inflight(const pblock *p) {
  return p->cell ? __atomic_load_n(&CELL(p->cell)->inflight, __ATOMIC_ACQUIRE) & ~CELL_ORPHAN : 0;
}

static void cell_free(pt_off off) {
  __atomic_store_n(&CELL(off)->magic, 0, __ATOMIC_RELAXED);
  pt_shm_free(off);
}

/* A forked worker leaving: its blocks die with it, but the messages it
   sent may still be met elsewhere.  A cell none holds goes now; the others
   are left to the last message's dropper.  Of a concurrent last drop and
   this, exactly one sees the count at 0 with the orphan bit set. */
PT_AFTER_FORK static void parr_exit_child(void) {
  pblock *p;
  /* no cell of this process's: nothing to free, and no lock taken (libc's
     mutex code is a page fault away in a new child, PT_AFTER_FORK); no
     thread worker runs here (pt_child_exit) */
  for (p = preg_head; p && !p->cell; p = p->next) {}
  if (!p) return;
  pthread_mutex_lock(&preg_mu);
  for (p = preg_head; p; p = p->next) {
    if (!p->cell) continue;
    if ((__atomic_fetch_or(&CELL(p->cell)->inflight, CELL_ORPHAN, __ATOMIC_ACQ_REL) &
         ~CELL_ORPHAN) == 0)
      cell_free(p->cell);
    p->cell = 0;
  }
  pthread_mutex_unlock(&preg_mu);
}

PT_AFTER_FORK static void preg_after_fork(void) {
  pblock *p;
  pt_mutex_reset(&preg_mu);                  /* a holder did not come along */
  /* the cells are the parent's, and so are the messages they count */
  for (p = preg_head; p; p = p->next) p->cell = 0;
}

/* The listed block with this id, or NULL (preg_mu held). */
static pblock *parr_find(uint64_t id) {
  pblock *p;
  for (p = preg_head; p; p = p->next)
    if (p->id == id) return p;
  return NULL;
}

/* Free p if nothing holds it any more; 1 when freed (preg_mu held). */
static int parr_reap(pblock *p) {
  if (p->a.refs || inflight(p)) return 0;
  if (p->prev) p->prev->next = p->next; else preg_head = p->next;
  if (p->next) p->next->prev = p->prev;
  if (p->cell) cell_free(p->cell);
  preg_zombies--;
  free(p);
  return 1;
}

/* Free the blocks whose last message was met elsewhere (preg_mu held). */
static void parr_sweep(void) {
  pblock *p, *next;
  for (p = preg_head; p && preg_zombies; p = next) {
    next = p->next;
    if (!p->a.refs) parr_reap(p);
  }
}

static ablock *parr_new(uint64_t n) {
  pblock *p = calloc(1, offsetof(pblock, a) + BLOCK_SIZE(n));
  if (!p) return NULL;
  p->a.kind = PT_KIND_ARRAY;
  p->a.refs = 1;
  p->a.n = n;
  pthread_mutex_lock(&preg_mu);
  parr_sweep();
  p->id = preg_next++;
  p->next = preg_head;
  if (preg_head) preg_head->prev = p;
  preg_head = p;
  pthread_mutex_unlock(&preg_mu);
  return &p->a;
}

static void parr_drop(ablock *b) {
  pthread_mutex_lock(&preg_mu);
  if (--b->refs == 0) {
    preg_zombies++;
    parr_reap(PBLOCK(b));
  }
  parr_sweep();
  pthread_mutex_unlock(&preg_mu);
}

/* The array at i, or NULL: the toolkit's check by metatable (handle.h),
   keyed by the arrays' codec type; fast from the metamethods. */
#define ARR_KEY ((const void *)&pt_xtype_array)
static ahandle *toarray(lua_State *L, int i) {
  return (ahandle *)pt_udata_test(L, i, ARR_KEY, ANAME);
}

#define FREED_MSG "shared array has been freed (a count on it was dropped " \
  "too often; its memory may hold something else now)"

static int shared_live(const ahandle *a) {
  return pt_shm_gen_ok(&PT_SHM_PTR(ablock, pt_shm_handle_off(&a->h))->gen, a->h.gen);
}

static ahandle *checkarray(lua_State *L, int i) {
  ahandle *a = toarray(L, i);
  if (!a) luaL_argerror(L, i, lua_pushfstring(L, "array expected, got %s", luaL_typename(L, i)));
  if (!a->data) luaL_argerror(L, i, "array is released");
  if (a->shared && !shared_live(a)) luaL_error(L, FREED_MSG);
  return a;
}

static ahandle *arr_push_blank(lua_State *L) {
  ahandle *a = pt_newuserdata(L, sizeof(ahandle));
  memset(a, 0, sizeof *a);
  luaL_getmetatable(L, ANAME);
  lua_setmetatable(L, -2);
  return a;
}

static void adopt_shared(ahandle *a, pt_off off) {
  ablock *b = PT_SHM_PTR(ablock, off);
  a->shared = 1;
  a->n = b->n;
  a->data = b->d;
  pt_shm_track(&a->h, off, __atomic_load_n(&b->gen, __ATOMIC_ACQUIRE), PT_KIND_ARRAY, sarr_drop);
}

static void adopt_private(ahandle *a, ablock *b) {
  a->shared = 0;
  a->priv = b;
  a->ppid = getpid();
  a->n = b->n;
  a->data = b->d;
}

static void arr_drop_handle(ahandle *a) {
  a->data = NULL;
  if (a->shared) {
    pt_shm_release(&a->h);
  } else if (a->priv) {
    ablock *b = a->priv;
    a->priv = NULL;
    if (a->ppid == getpid()) parr_drop(b);
  }
}

/* For pt.release and pt._shm_release (arena_lua.c). */
static int arr_release(lua_State *L, int idx) {
  ahandle *a = toarray(L, idx);
  if (!a) return 0;
  arr_drop_handle(a);
  return 1;
}

static int arr_drop_count(lua_State *L, int idx) {
  ahandle *a = toarray(L, idx);
  if (!a || !a->shared) return 0;
  checkarray(L, idx);
  sarr_drop(pt_shm_handle_off(&a->h), a->h.gen);
  return 1;
}

static const pt_shm_kind arr_kind = {arr_release, arr_drop_count};

/* The index at 2 as given (tostring: an integer or a float), and the
   range, in full. */
static void out_of_range(lua_State *L, const ahandle *a) {
  char n[NUMLEN];
  snprintf(n, sizeof n, "%llu", (unsigned long long)a->n);
  lua_pushvalue(L, 2);
  luaL_error(L, "array index %s out of range (1..%s)", lua_tostring(L, -1), n);
}

static void not_integer(lua_State *L) {
  lua_pushvalue(L, 2);
  luaL_error(L, "array index must be an integer, got %s", lua_tostring(L, -1));
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
    if (!ok && lua_tonumber(L, 2) == floor(lua_tonumber(L, 2))) out_of_range(L, a);
    if (!ok) not_integer(L);
  }
#else
  {
    lua_Number x = lua_tonumber(L, 2);
    if (x != floor(x)) not_integer(L);
    if (!(x >= -9.2e18 && x <= 9.2e18)) out_of_range(L, a);
    i = (lua_Integer)x;
  }
#endif
  if (i < 1 || (uint64_t)i > a->n) out_of_range(L, a);
  return (uint64_t)i - 1;
}

static int arr_index(lua_State *L) {
  ahandle *a = checkarray(L, 1);
  uint64_t i = checkindex(L, a);
  double v;
  __atomic_load(&a->data[i], &v, __ATOMIC_RELAXED);
  lua_pushnumber(L, v);
  return 1;
}

static int arr_newindex(lua_State *L) {
  ahandle *a = checkarray(L, 1);
  uint64_t i = checkindex(L, a);
  double v;
  if (lua_type(L, 3) != LUA_TNUMBER)
    return luaL_error(L, "array values are numbers, got %s", luaL_typename(L, 3));
  v = (double)lua_tonumber(L, 3);
  __atomic_store(&a->data[i], &v, __ATOMIC_RELAXED);
  return 0;
}

static int arr_len(lua_State *L) {
  ahandle *a = checkarray(L, 1);
  lua_pushinteger(L, (lua_Integer)a->n);
  return 1;
}

static int arr_live(const void *p) { return ((const ahandle *)p)->data != NULL; }

static int arr_gc(lua_State *L) {
  ahandle *a = toarray(L, 1);
  if (a) arr_drop_handle(a);
  return 0;
}

static int arr_eq(lua_State *L) {
  ahandle *a = toarray(L, 1), *b = toarray(L, 2);
  lua_pushboolean(L, a && b && a->data && a->data == b->data && a->h.gen == b->h.gen);
  return 1;
}

static int arr_tostring(lua_State *L) {
  ahandle *a = toarray(L, 1);
  char n[NUMLEN];
  if (a && a->data && a->shared && !shared_live(a)) {
    lua_pushstring(L, ANAME " (freed)");
  } else if (a && a->data) {
    snprintf(n, sizeof n, "%llu", (unsigned long long)a->n);
    lua_pushfstring(L, ANAME " (%s, %s): %p", a->shared ? "shared" : "private", n,
                    (void *)a->data);
  } else {
    lua_pushstring(L, ANAME " (released)");
  }
  return 1;
}

/* The bound pt.array's message names. */
typedef char pt_array_bound_is_2_43[PT_SHM_MAX_SIZE / sizeof(double) == (uint64_t)1 << 43 ? 1 : -1];

/* pt.array(n [, "private" | "shared"]) -> array | nil, err, errno */
static int arr_new(lua_State *L) {
  static const char *const kinds[] = {"private", "shared", NULL};
  lua_Number nn = lua_type(L, 1) == LUA_TNUMBER ? lua_tonumber(L, 1) : -1;
  int shared = luaL_checkoption(L, 2, "private", kinds);
  uint64_t n;
  ahandle *a;
  /* at most what the largest arena holds, private arrays too; a number
     (a string such as "10" is a mistake, as pt.channel says) */
  if (!(nn >= 0 && nn <= (lua_Number)(PT_SHM_MAX_SIZE / sizeof(double))) ||
      (lua_Number)(uint64_t)nn != nn)
    return luaL_argerror(L, 1, lua_pushfstring(L, "size must be an integer from 0 to 2^43 "
                                                  "(8796093022208), got %s",
                                                  lua_type(L, 1) == LUA_TNUMBER
                                                    ? lua_tostring(L, 1) : luaL_typename(L, 1)));
  n = (uint64_t)nn;
  a = arr_push_blank(L);
  if (shared) {
    pt_off off;
    ablock *b;
    if (pt_shm_ensure() != 0) return pt_push_shm_error(L, errno);
    off = pt_shm_alloc(BLOCK_SIZE(n));
    if (!off) {                               /* garbage may hold the space */
      lua_gc(L, LUA_GCCOLLECT, 0);
      off = pt_shm_alloc(BLOCK_SIZE(n));
    }
    if (!off) return luaL_error(L, "array: %s", pt_shm_full_msg());
    b = PT_SHM_PTR(ablock, off);
    b->kind = PT_KIND_ARRAY;
    b->refs = 1;
    b->n = n;
    memset(b->d, 0, (size_t)n * sizeof(double));
    b->magic = SARR_MAGIC;
    pt_shm_gen_publish(&b->gen, pt_shm_new_gen());
    adopt_shared(a, off);
  } else {
    ablock *b = parr_new(n);
    if (!b) return pt_push_oserror(L, "pt.array", ENOMEM);
    adopt_private(a, b);
  }
  return 1;
}

/* ---- crossing between states (codec) ------------------------------------------- */

/* A shared array crosses as its offset and generation | REF_SHARED; a
   private one as its arena cell and id (see "Lifetime" above). */

/* p's cell, made on first use; 0 when the arena cannot give one (preg_mu
   held). */
static pt_off parr_cell(pblock *p) {
  pcell *c;
  if (p->cell) return p->cell;
  if (pt_shm_ensure() != 0 || !(p->cell = pt_shm_alloc(sizeof(pcell)))) return 0;
  c = CELL(p->cell);
  c->pid = (uint64_t)getpid();
  c->id = p->id;
  c->inflight = 0;
  c->magic = CELL_MAGIC;
  return p->cell;
}

static const char *arr_encode(lua_State *L, int idx, pt_ref *ref) {
  ahandle *a = toarray(L, idx);
  const char *err = NULL;
  if (!a) return "not an array";
  if (!a->data) return "array is released";
  if (a->shared) {
    pt_off off = pt_shm_handle_off(&a->h);
    if (!shared_live(a)) return FREED_MSG;
    pt_shm_incref(&PT_SHM_PTR(ablock, off)->refs);
    ref->a = off;
    ref->b = a->h.gen | REF_SHARED;
    return NULL;
  }
  pthread_mutex_lock(&preg_mu);
  parr_sweep();
  if (parr_cell(PBLOCK(a->priv))) {
    __atomic_add_fetch(&CELL(PBLOCK(a->priv)->cell)->inflight, 1, __ATOMIC_RELAXED);
    ref->a = PBLOCK(a->priv)->cell;
    ref->b = PBLOCK(a->priv)->id;
  } else {
    err = pt_shm_mapped() ? pt_shm_full_msg() : pt_shm_errmsg();
  }
  pthread_mutex_unlock(&preg_mu);
  return err;
}

/* The arena object a reference names, checked: 0 when it is none. */
static int valid_at(const pt_ref *ref, size_t size) { return pt_shm_plausible(ref->a, size); }

static int valid_shared(const pt_ref *ref) {
  ablock *b;
  if (!(ref->b & REF_SHARED) || !valid_at(ref, sizeof(ablock))) return 0;
  b = PT_SHM_PTR(ablock, ref->a);
  return __atomic_load_n(&b->magic, __ATOMIC_RELAXED) == SARR_MAGIC && pt_shm_gen_ok(&b->gen, ref->b & ~REF_SHARED);
}

static pcell *valid_cell(const pt_ref *ref) {
  pcell *c;
  if (ref->b & REF_SHARED || !valid_at(ref, sizeof(pcell))) return NULL;
  c = CELL(ref->a);
  return __atomic_load_n(&c->magic, __ATOMIC_RELAXED) == CELL_MAGIC && c->id == ref->b ? c : NULL;
}

static void arr_ref_release(const pt_ref *ref) {
  pcell *c;
  if (ref->b & REF_SHARED) {
    if (valid_shared(ref)) sarr_drop(ref->a, ref->b & ~REF_SHARED);
  } else if ((c = valid_cell(ref)) != NULL) {
    if (c->pid != (uint64_t)getpid()) {
      if (__atomic_sub_fetch(&c->inflight, 1, __ATOMIC_ACQ_REL) == CELL_ORPHAN)
        cell_free(ref->a);                    /* its maker is gone */
      return;
    }
    pthread_mutex_lock(&preg_mu);
    __atomic_sub_fetch(&c->inflight, 1, __ATOMIC_ACQ_REL);
    parr_sweep();
    pthread_mutex_unlock(&preg_mu);
  }
}

static const char *arr_decode(lua_State *L, const pt_ref *ref) {
  ahandle *a;
  pcell *c;
  pblock *p;
  if (ref->b & REF_SHARED) {
    if (!valid_shared(ref))
      return "corrupt message (bad shared array reference, or the array has been freed)";
    a = arr_push_blank(L);
    adopt_shared(a, ref->a);
    return NULL;
  }
  if (!(c = valid_cell(ref))) return "corrupt message (bad private array reference)";
  if (c->pid != (uint64_t)getpid()) return "private array cannot cross to another process";
  a = arr_push_blank(L);                          /* may raise: before anything is taken */
  pthread_mutex_lock(&preg_mu);
  p = parr_find(ref->b);
  if (p && p->cell == ref->a) {
    if (p->a.refs++ == 0) preg_zombies--;     /* the message's count becomes a handle's */
    __atomic_sub_fetch(&c->inflight, 1, __ATOMIC_ACQ_REL);
    adopt_private(a, &p->a);
  }
  pthread_mutex_unlock(&preg_mu);
  if (!p || !a->data) {
    lua_pop(L, 1);
    return "corrupt message (bad private array reference)";
  }
  return NULL;
}

const pt_xtype pt_xtype_array = {ANAME, arr_encode, arr_ref_release, arr_decode};

void pt_open_array(lua_State *L) {
  static const luaL_Reg meta[] = {
    {"__index", arr_index}, {"__newindex", arr_newindex}, {"__len", arr_len},
    {"__gc", arr_gc}, {"__eq", arr_eq}, {"__tostring", arr_tostring},
#if LUA_VERSION_NUM >= 504
    {"__close", arr_gc},
#endif
    {NULL, NULL}};
  pt_shm_init_process();
  pt_atfork_child(preg_after_fork);
  pt_on_child_exit(parr_exit_child);
  pt_shm_register_kind(PT_KIND_ARRAY, &arr_kind);
  pt_shm_set_take(PT_KIND_ARRAY, sarr_take);
  pt_meta_open(L, ANAME, ARR_KEY, arr_live, meta, NULL);
  lua_pushcfunction(L, arr_new);
  lua_setfield(L, -2, "array");
}
