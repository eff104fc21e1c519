/* codec_ref.c - what references need: the process tree's key, the
 * registry of types that cross by reference, and tickets (see codec.h). */
#include "codec.h"
#include "shm.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* ---- the key: one per process tree ------------------------------------- */

uint64_t pt_codec_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void key_make(void) {
  uint64_t k = 0;
  if (getrandom(&k, sizeof k, 0) != (ssize_t)sizeof k) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    k = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
  }
  pt_codec_key = k | 1;
}

void pt_codec_key_init(void) { pthread_once(&key_once, key_make); }

/* ---- the types that cross by reference ------------------------------------
 * A small fixed table.  A type is named on the wire by its index, so the
 * order of registration is the wire format: core.c registers every type
 * once per process, in one fixed order, before any state can encode, and
 * every state of a process tree runs the same binary. */

static const pt_xtype *xtypes[PT_CODEC_MAXTYPES];
static int nxtypes;                     /* atomic: readers take no lock */
static pthread_mutex_t xtypes_mu = PTHREAD_MUTEX_INITIALIZER;

int pt_codec_register(const pt_xtype *t) {
  int i, r = -1;
  pthread_mutex_lock(&xtypes_mu);
  for (i = 0; i < nxtypes; i++)
    if (xtypes[i] == t) r = i;
  if (r < 0 && nxtypes < PT_CODEC_MAXTYPES) {
    r = nxtypes;
    xtypes[r] = t;
    __atomic_store_n(&nxtypes, r + 1, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&xtypes_mu);
  return r;
}

int pt_codec_ntypes(void) { return __atomic_load_n(&nxtypes, __ATOMIC_ACQUIRE); }

const pt_xtype *pt_codec_xtype(int i) {
  return i >= 0 && i < pt_codec_ntypes() ? xtypes[i] : NULL;
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

static uint64_t ticket_counter;

static uint64_t ticket_nonce(void) {
  uint64_t x = __atomic_add_fetch(&ticket_counter, 1, __ATOMIC_RELAXED) ^
               ((uint64_t)(uint32_t)getpid() << 40);
  x ^= pt_codec_key;
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

static size_t ticket_set_slot(uint64_t n, size_t cap) { return (size_t)(n * 0x9E3779B97F4A7C15ull) & (cap - 1); }

static int ticket_set_grow(void) {
  size_t cap = local_cap ? local_cap * 2 : 64, i, j;
  uint64_t *t = calloc(cap, sizeof *t);
  if (!t) return -1;
  local_fill = 0;
  for (i = 0; i < local_cap; i++) {
    if (local_set[i] < 2) continue;
    for (j = ticket_set_slot(local_set[i], cap); t[j]; j = (j + 1) & (cap - 1)) {}
    t[j] = local_set[i];
    local_fill++;
  }
  free(local_set);
  local_set = t;
  local_cap = cap;
  return 0;
}

static int ticket_set_add(uint64_t n) {
  size_t j;
  int r = 0;
  pthread_mutex_lock(&local_mu);
  if ((local_fill + 1) * 2 > local_cap) r = ticket_set_grow();
  if (r == 0) {
    for (j = ticket_set_slot(n, local_cap); local_set[j] >= 2; j = (j + 1) & (local_cap - 1)) {}
    if (local_set[j] == 0) local_fill++;
    local_set[j] = n;
  }
  pthread_mutex_unlock(&local_mu);
  return r;
}

static int ticket_set_take(uint64_t n) {
  size_t j;
  int found = 0;
  pthread_mutex_lock(&local_mu);
  if (local_cap)
    for (j = ticket_set_slot(n, local_cap); local_set[j]; j = (j + 1) & (local_cap - 1))
      if (local_set[j] == n) { local_set[j] = 1; found = 1; break; }
  pthread_mutex_unlock(&local_mu);
  return found;
}

PT_AFTER_FORK static void ticket_set_after_fork(void) { pt_mutex_reset(&local_mu); }

static void ticket_put64(char *p, uint64_t v) { memcpy(p, &v, 8); }

int pt_codec_ticket_make(char *out) {
  uint64_t nonce = ticket_nonce(), where;
  int kind;
  if (pt_shm_base) {
    pt_off off = pt_shm_alloc(16);
    if (!off) return -1;
    __atomic_store_n(PT_SHM_PTR(uint64_t, off), nonce, __ATOMIC_RELEASE);
    kind = TK_ARENA;
    where = off;
  } else {
    if (ticket_set_add(nonce)) return -1;
    kind = TK_LOCAL;
    where = (uint64_t)(uint32_t)getpid();
  }
  out[0] = T_TICKET;
  out[1] = (char)kind;
  ticket_put64(out + 2, where);
  ticket_put64(out + 10, nonce);
  return 0;
}

/* A ticket word the arena can hold? */
static int ticket_word_ok(uint64_t off) {
  return pt_shm_base && off >= 64 && off % 16 == 0 && off <= pt_shm_config_size() - 16;
}

int pt_codec_ticket_take(const pt_ticket *t) {
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
  return ticket_set_take(t->nonce);
}

void pt_codec_ref_open(void) {
  pt_codec_key_init();
  pt_atfork_child(ticket_set_after_fork);
}
