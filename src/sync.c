/* sync.c - pt.semaphore, pt.event, pt.barrier: small objects in the arena,
 * across threads and processes, crossing to workers by reference.
 *
 * Each is one `syncobj`: the object header (obj.h), a robust lock, a
 * condition variable (wait.h: woken before the publishing store, so a kill
 * never strands a sleeper) and one 64-bit state word that every change
 * publishes with a single store:
 *   semaphore  the count of permits (taken lock-free when there is one)
 *   event      generation << 1 | level: each set of a clear event moves
 *              the generation, so a waiter that began before it returns
 *              even when a clear follows at once (it looks for the level
 *              set OR the generation moved since it began)
 *   barrier    round << 32 | the highest index handed out in this round
 *              (with a bitmap of the indices given back below it)
 * The plain-C part (above "Lua side") touches no lua_State. */
#include "handle.h"
#include "wait.h"

#include <errno.h>
#include <string.h>

#define SEM_MAGIC 0x73656d31u               /* "sem1" */
#define EVT_MAGIC 0x65767431u               /* "evt1" */
#define BAR_MAGIC 0x62617231u               /* "bar1" */
#define SYNC_MAX 0x7fffffff

typedef struct syncobj {
  pt_obj obj;
  pthread_mutex_t mu;
  pt_cond cond;
  uint32_t n;                  /* barrier: parties per round */
  uint32_t spare;              /* barrier: holes below the top */
  uint64_t state;
} syncobj;

#define S(off) PT_SHM_PTR(syncobj, off)
#define LOAD(o) __atomic_load_n(&(o)->state, __ATOMIC_ACQUIRE)
#define STORE(o, v) __atomic_store_n(&(o)->state, (v), __ATOMIC_RELEASE)

/* extra: bytes after the object (a barrier's holes), zeroed too. */
static pt_off sync_new(uint32_t magic, uint32_t n, uint64_t state, size_t extra) {
  pt_off off = pt_shm_alloc_aligned(sizeof(syncobj) + extra, 64);
  syncobj *o;
  if (!off) { errno = ENOMEM; return 0; }
  o = S(off);
  memset(o, 0, sizeof *o + extra);
  if (pt_lock_init(&o->mu, 0) != 0) {
    int e = errno;
    pt_shm_free_aligned(off);
    errno = e;
    return 0;
  }
  o->n = n;
  o->state = state;
  pt_obj_publish(off, magic);
  return off;
}

static void sync_drop(pt_off off, uint64_t gen) {
  if (!pt_obj_drop(off, gen)) return;
  pthread_mutex_destroy(&S(off)->mu);
  pt_shm_free_aligned(off);
}

/* Holding nothing: wait on o until ready(arg), which also takes what it found
   (a permit).  First a look (inlined: the common case), then a spin
   (pt_spin_until: a release or set that is about to come then costs
   neither side a system call), then under the lock.  What is ready when
   the wait ends wins over a timeout or a cancel. */
static inline int sync_wait(syncobj *o, void *arg, double deadline, const pt_wake *w,
                            int (*ready)(void *)) {
  int r = PT_OK, ok;
  if (ready(arg) || pt_spin_until(ready, arg)) return PT_OK;
  if (pt_lock(&o->mu, pt_shm_recovered, NULL) == PT_ERR) return PT_ERR;
  while (!(ok = ready(arg))) {
    if (r != PT_OK || (deadline >= 0 && pt_clock_now() >= deadline)) break;
    r = pt_cond_wait_on(&o->cond, &o->mu, deadline, w, pt_shm_recovered, NULL);
  }
  pt_unlock(&o->mu);
  if (ok) return PT_OK;
  return r == PT_OK ? PT_TIMEOUT : r;
}

/* ---- semaphore ----------------------------------------------------------------- */

/* Take one permit if there is one, lock-free. */
static int sem_try(void *arg) {
  syncobj *o = (syncobj *)arg;
  uint64_t v = LOAD(o);
  while (v > 0)
    if (__atomic_compare_exchange_n(&o->state, &v, v - 1, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      return 1;
  return 0;
}

static int sem_acquire(void *arg, double deadline, const pt_wake *w) {
  return sync_wait((syncobj *)arg, arg, deadline, w, sem_try);
}

/* Add k permits: 0, or -1 when the count would pass SYNC_MAX. */
static int sem_release(syncobj *o, uint64_t k) {
  int r = 0;
  if (pt_lock(&o->mu, pt_shm_recovered, NULL) == PT_ERR) return -1;
  if (LOAD(o) + k > SYNC_MAX) r = -1;
  else {
    pt_cond_wake(&o->cond);
    __atomic_add_fetch(&o->state, k, __ATOMIC_ACQ_REL);
  }
  pt_unlock(&o->mu);
  return r;
}

/* ---- event ----------------------------------------------------------------------- */

#define EVT_LEVEL 1u
#define EVT_GEN(s) ((s) >> 1)

typedef struct evt_waiter {
  syncobj *o;
  uint64_t gen;                /* the generation when the wait began */
} evt_waiter;

static int evt_ready(void *arg) {
  const evt_waiter *ew = (const evt_waiter *)arg;
  uint64_t s = LOAD(ew->o);
  return (s & EVT_LEVEL) || EVT_GEN(s) != ew->gen;
}

/* A retry (after PT_INTR) keeps the generation of the first look. */
static int evt_wait(void *arg, double deadline, const pt_wake *w) {
  evt_waiter *ew = (evt_waiter *)arg;
  return sync_wait(ew->o, ew, deadline, w, evt_ready);
}

/* Set: a clear event takes the next generation (waking every sleeper);
   a set one is left alone (nobody sleeps on it).  Clear: the level only
   (nobody waits for a clear). */
static void evt_set(syncobj *o, int level) {
  uint64_t s;
  if (pt_lock(&o->mu, pt_shm_recovered, NULL) == PT_ERR) return;
  s = LOAD(o);
  if (level && !(s & EVT_LEVEL)) {
    pt_cond_wake(&o->cond);
    STORE(o, (s + 2) | EVT_LEVEL);
  } else if (!level && (s & EVT_LEVEL)) {
    STORE(o, s & ~(uint64_t)EVT_LEVEL);
  }
  pt_unlock(&o->mu);
}

/* ---- barrier ------------------------------------------------------------------------
 * state: round << 32 | top, the highest index handed out in this round.
 * A party that withdraws below the top leaves a hole: a bit (index i is
 * bit i) in the bitmap after the object, counted in o->spare; the top
 * that withdraws lowers top past the holes below it.  An arrival takes
 * the lowest hole before it raises top, so top < n while holes remain,
 * and the round ends when top reaches n with no hole: the n parties
 * present hold 1..n, each its own.  A changer killed halfway leaves at
 * most stale bits at or above top and a wrong count: bar_repair, run by
 * the next locker, clears and recounts them. */

#define ROUND(s) ((uint32_t)((s) >> 32))
#define TOP(s) ((uint32_t)(s))
#define BSTATE(round, top) (((uint64_t)(round) << 32) | (uint64_t)(top))
#define HOLES(o) ((uint64_t *)((o) + 1))
#define HOLE_WORDS(n) (((size_t)(n) + 63) / 64)

static int hole(const syncobj *o, uint32_t i) {
  return (int)((HOLES(o)[i / 64] >> (i % 64)) & 1);
}

static void hole_mark(syncobj *o, uint32_t i, int on) {
  uint64_t bit = (uint64_t)1 << (i % 64);
  if (on) HOLES(o)[i / 64] |= bit;
  else HOLES(o)[i / 64] &= ~bit;
}

/* The lowest hole, taken (there is one below top). */
static uint32_t hole_take(syncobj *o) {
  uint64_t *h = HOLES(o);
  size_t k = 0;
  uint32_t i;
  while (!h[k]) k++;
  i = (uint32_t)(k * 64 + (size_t)__builtin_ctzll(h[k]));
  hole_mark(o, i, 0);
  o->spare--;
  return i;
}

static void bar_repair(void *arg) {
  syncobj *o = (syncobj *)arg;
  uint32_t top = TOP(LOAD(o)), holes = 0;
  size_t k;
  pt_shm_recovered(NULL);
  for (k = 0; k < HOLE_WORDS(o->n); k++) {
    uint64_t keep = top <= k * 64 ? 0 : top - k * 64 >= 64 ? ~(uint64_t)0
                  : ((uint64_t)1 << (top - k * 64)) - 1;
    HOLES(o)[k] &= keep & (k ? ~(uint64_t)0 : ~(uint64_t)1);
    holes += (uint32_t)__builtin_popcountll(HOLES(o)[k]);
  }
  o->spare = holes;
}

typedef struct arrival {
  syncobj *o;
  uint32_t round, index;       /* index 0: not arrived yet */
} arrival;

/* Arrive (once) and wait for the round to end.  A retry (after PT_INTR)
   waits on as the same party; one that gives up leaves (bar_leave). */
static int bar_wait(void *arg, double deadline, const pt_wake *w) {
  arrival *a = (arrival *)arg;
  syncobj *o = a->o;
  int r = PT_OK;
  if (pt_lock(&o->mu, bar_repair, o) == PT_ERR) return PT_ERR;
  if (!a->index) {
    uint64_t s = LOAD(o);
    a->round = ROUND(s);
    if (o->spare) a->index = hole_take(o);
    else if ((a->index = TOP(s) + 1) == o->n) {   /* the last one: open the next round */
      pt_cond_wake(&o->cond);
      STORE(o, BSTATE(a->round + 1, 0));
      pt_unlock(&o->mu);
      return PT_OK;
    } else STORE(o, BSTATE(a->round, a->index));
  }
  while (ROUND(LOAD(o)) == a->round) {
    if (deadline >= 0 && pt_clock_now() >= deadline) { r = PT_TIMEOUT; break; }
    r = pt_cond_wait_on(&o->cond, &o->mu, deadline, w, bar_repair, o);
    if (r != PT_OK) break;
  }
  if (ROUND(LOAD(o)) != a->round) r = PT_OK;
  pt_unlock(&o->mu);
  return r;
}

/* A party that arrived gives up (timeout, cancel, Ctrl-C, an error):
   it withdraws its arrival while the round is still open; PT_OK when the
   round ended meanwhile (it passed), else r. */
static int bar_leave(arrival *a, int r) {
  syncobj *o = a->o;
  uint64_t s;
  uint32_t top, t;
  if (!a->index || pt_lock(&o->mu, bar_repair, o) == PT_ERR) return r;
  s = LOAD(o);
  top = TOP(s);
  if (ROUND(s) != a->round) r = PT_OK;
  else if (a->index < top) {                 /* a hole below the top */
    hole_mark(o, a->index, 1);
    o->spare++;
  } else {                                   /* the top: down past the holes */
    for (t = top - 1; t > 0 && hole(o, t); t--) {}
    STORE(o, BSTATE(a->round, t));
    while (++t < top) { hole_mark(o, t, 0); o->spare--; }
  }
  pt_unlock(&o->mu);
  return r;
}

/* ---- Lua side ----------------------------------------------------------------------- */

#define SEM_MT "procthread.Semaphore"
#define EVT_MT "procthread.Event"
#define BAR_MT "procthread.Barrier"

static int sem_valid(pt_off off) { return pt_obj_valid(off, SEM_MAGIC, sizeof(syncobj)); }
static int evt_valid(pt_off off) { return pt_obj_valid(off, EVT_MAGIC, sizeof(syncobj)); }
static int bar_valid(pt_off off) { return pt_obj_valid(off, BAR_MAGIC, sizeof(syncobj)); }

static const pt_class sem_class = {SEM_MT, "semaphore", 0x11, sem_valid, sync_drop};
static const pt_class evt_class = {EVT_MT, "event", 0x12, evt_valid, sync_drop};
static const pt_class bar_class = {BAR_MT, "barrier", 0x13, bar_valid, sync_drop};

PT_HANDLE_XTYPE(pt_xtype_semaphore, sem_class, SEM_MT);
PT_HANDLE_XTYPE(pt_xtype_event, evt_class, EVT_MT);
PT_HANDLE_XTYPE(pt_xtype_barrier, bar_class, BAR_MT);

#define OBJ(L, c, fn) S(PT_HOFF(L, 1, c, fn))
#define COUNT(L, i, dflt, lo, fn, what) \
  ((uint32_t)pt_check_int(L, i, dflt, lo, SYNC_MAX, fn, what))

static int push_new(lua_State *L, const pt_class *c, uint32_t magic, uint32_t n,
                    uint64_t state, size_t extra) {
  pt_off off;
  if (pt_shm_ensure() != 0) return pt_push_shm_error(L, errno);
  off = sync_new(magic, n, state, extra);
  if (!off && errno == ENOMEM) {
    lua_gc(L, LUA_GCCOLLECT, 0);             /* garbage handles may hold space */
    off = sync_new(magic, n, state, extra);
  }
  if (!off) {
    if (errno == ENOMEM) return luaL_error(L, "%s: %s", c->what, pt_shm_full_msg());
    return pt_push_oserror(L, c->what, errno);
  }
  pt_handle_push(L, c, off);
  return 1;
}

/* obj:<name>([timeout]) for a semaphore or an event (arg: what step
   takes): true, or the status pushed (op names the operation in an OS error). */
static int wait_lua(lua_State *L, void *arg, pt_waitfn step, const char *name,
                    const char *op) {
  double deadline = pt_check_deadline(L, 2, 1, name);
  int r = pt_wait_lua(L, step, arg, deadline);
  if (r != PT_OK) return pt_push_status(L, r, op, errno);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_semaphore(lua_State *L) {
  uint32_t n = COUNT(L, 1, -1, 0, "semaphore", "initial value");
  return push_new(L, &sem_class, SEM_MAGIC, 0, n, 0);
}

static int l_acquire(lua_State *L) {
  syncobj *o = OBJ(L, &sem_class, "acquire");
  return wait_lua(L, o, sem_acquire, "acquire", "semaphore acquire");
}

static int l_release(lua_State *L) {
  syncobj *o = OBJ(L, &sem_class, "release");
  uint32_t k = COUNT(L, 2, 1, 1, "release", "count");
  if (sem_release(o, k) != 0)
    return luaL_error(L, "release: the semaphore's value would pass %d", SYNC_MAX);
  return 0;
}

static int l_value(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)LOAD(OBJ(L, &sem_class, "value")));
  return 1;
}

static int l_event(lua_State *L) { return push_new(L, &evt_class, EVT_MAGIC, 0, 0, 0); }

static int l_set(lua_State *L) {
  evt_set(OBJ(L, &evt_class, "set"), 1);
  return 0;
}

static int l_clear(lua_State *L) {
  evt_set(OBJ(L, &evt_class, "clear"), 0);
  return 0;
}

static int l_is_set(lua_State *L) {
  lua_pushboolean(L, (LOAD(OBJ(L, &evt_class, "is_set")) & EVT_LEVEL) != 0);
  return 1;
}

static int l_evt_wait(lua_State *L) {
  evt_waiter ew;
  ew.o = OBJ(L, &evt_class, "wait");
  ew.gen = EVT_GEN(LOAD(ew.o));
  return wait_lua(L, &ew, evt_wait, "wait", "event wait");
}

static int l_barrier(lua_State *L) {
  uint32_t n = COUNT(L, 1, -1, 1, "barrier", "parties");
  return push_new(L, &bar_class, BAR_MAGIC, n, 0, HOLE_WORDS(n) * sizeof(uint64_t));
}

static int l_bar_wait(lua_State *L) {
  arrival a;
  double deadline;
  int r, e;
  a.o = OBJ(L, &bar_class, "wait");
  a.round = a.index = 0;
  deadline = pt_check_deadline(L, 2, 1, "wait");
  r = pt_wait_lua(L, bar_wait, &a, deadline);
  e = errno;
  if (r != PT_OK) r = bar_leave(&a, r);
  if (r != PT_OK) return pt_push_status(L, r, "barrier wait", e);
  lua_pushinteger(L, (lua_Integer)a.index);
  return 1;
}

static int l_parties(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)OBJ(L, &bar_class, "parties")->n);
  return 1;
}

void pt_open_sync(lua_State *L) {
  static const luaL_Reg sem[] = {
    {"acquire", l_acquire}, {"release", l_release}, {"value", l_value}, {NULL, NULL}};
  static const luaL_Reg evt[] = {
    {"set", l_set}, {"clear", l_clear}, {"is_set", l_is_set}, {"wait", l_evt_wait},
    {NULL, NULL}};
  static const luaL_Reg bar[] = {{"wait", l_bar_wait}, {"parties", l_parties}, {NULL, NULL}};
  static const luaL_Reg fns[] = {
    {"semaphore", l_semaphore}, {"event", l_event}, {"barrier", l_barrier}, {NULL, NULL}};
  pt_class_open(L, &sem_class, sem, NULL);
  pt_class_open(L, &evt_class, evt, NULL);
  pt_class_open(L, &bar_class, bar, NULL);
  pt_setfuncs(L, fns);
}
