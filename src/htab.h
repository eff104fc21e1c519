/* htab.h - the shared hash table (plain C, no Lua): a hash table that
 * lives in the shared arena, its keys and values, its lock, and dumps
 * (copies of its entries).  The Lua binding is table.c.  See htab.c for
 * the layout and the crash-consistency protocol. */
#ifndef PT_HTAB_H
#define PT_HTAB_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shm.h"

/* Types of keys and values. */
enum { PT_V_NIL, PT_V_FALSE, PT_V_TRUE, PT_V_INT, PT_V_FLT, PT_V_SSTR, PT_V_LSTR, PT_V_TAB };

typedef struct pt_slot {
  uint32_t ctl, hash;
  uint64_t key;
  uint64_t val[2];
} pt_slot;

/* The first cache line holds all an ordinary operation touches besides
   its slot: the lock, the slot array word and the counts. */
typedef struct pt_stab {
  pthread_mutex_t mu;
  uint64_t slots;         /* offset of slot 0 (64-aligned) | log2(capacity) */
  uint64_t count, tombs;
  uint32_t magic, kind;
  uint64_t refs;
  uint64_t gen;           /* see pt_shm_new_gen; 0 once destroyed */
} pt_stab;

#define PT_HT(off) PT_SHM_PTR(pt_stab, off)

/* A key or value on the C side.  bits: the integer, the double's bits, the
   inline string bytes (strings up to 8 bytes), or an arena offset (long
   string, table).  s, len: a string's bytes (len also for a short one). */
typedef struct pt_kv {
  int t;
  uint64_t bits;
  const char *s;
  size_t len;
  uint32_t hash;
} pt_kv;

/* ---- keys and values -------------------------------------------------- */
/* A string as a kv (no arena memory taken: a long one is PT_V_LSTR with s). */
void pt_ht_string(pt_kv *v, const char *s, size_t len);
/* A float key: an integral one is the integer key (as Lua's tables say). */
void pt_ht_number_key(pt_kv *k, double d);
/* Fill k->hash: the last step of making a key. */
void pt_ht_hash(pt_kv *k);
/* Take the arena memory a value needs (a long string's copy): 0 ok, -1 the
   arena is full. */
int pt_ht_prepare(pt_kv *v);
/* Drop what a prepared value holds (long string, a count on a table). */
void pt_ht_unprepare(pt_kv *v);

/* ---- tables ----------------------------------------------------------- */
/* A new empty table with one count, or 0 (errno: ENOMEM when the arena is
   full, else the mutex error). */
pt_off pt_ht_new(void);
static inline void pt_ht_incref(pt_off off) { pt_shm_incref(&PT_HT(off)->refs); }
void pt_ht_decref(pt_off off);
/* A handle's drop (pt_shm_track): one count, only while gen holds. */
void pt_ht_drop(pt_off off, uint64_t gen);
static inline int pt_ht_live(pt_off off, uint64_t gen) {
  return pt_shm_gen_ok(&PT_HT(off)->gen, gen);
}
static inline uint64_t pt_ht_gen(pt_off off) {
  return __atomic_load_n(&PT_HT(off)->gen, __ATOMIC_ACQUIRE);
}
static inline pt_off pt_ht_off(const pt_stab *t) {
  return (pt_off)((const char *)t - PT_SHM_PTR(char, 0));
}
/* Does a reference read from a message name a live table of generation
   gen? */
int pt_ht_valid(pt_off off, uint64_t gen);

/* The lock: 0 held (a dead owner's table repaired), -1 errno (ECANCELED
   when cancelled() said so while waiting; see pt_lock_acquire_spin).
   Recursive. */
int pt_ht_lock(pt_stab *t, int (*cancelled)(void));
void pt_ht_unlock(pt_stab *t);
/* Start fetching the slot a key hashes to while the lock is being taken
   (a hint only: the slot array may change before the lock is ours, and a
   prefetch never faults). */
static inline void pt_ht_prefetch(pt_stab *t, uint32_t hash) {
  uint64_t w = __atomic_load_n(&t->slots, __ATOMIC_RELAXED);
  if (w) __builtin_prefetch(PT_SHM_PTR(pt_slot, w & ~63ULL) + (hash & ((1ULL << (w & 63)) - 1)), 1);
}

/* ---- under the lock --------------------------------------------------- */
/* k's slot, or NULL. */
pt_slot *pt_ht_find(pt_stab *t, const pt_kv *k);
/* The value in a slot (a long string's s points into the arena; a table
   gets no count). */
void pt_ht_slot_value(const pt_slot *sl, pt_kv *v);
/* Replace the value of a slot by a prepared number (pt.add). */
void pt_ht_slot_set(pt_slot *sl, const pt_kv *v);
/* Is the value in sl (absence when NULL) equal to e, as == says? */
int pt_ht_slot_equals(const pt_slot *sl, const pt_kv *e);
/* A border of the table (as # says). */
int64_t pt_ht_border(pt_stab *t);

/* Things a change made unreachable, dropped once the lock is released. */
typedef struct pt_garbage {
  int n;
  int t[3];
  uint64_t bits[3];
} pt_garbage;
/* Store prepared value v (PT_V_NIL deletes) under k.  On success the table
   owns v; what it replaced goes to g (g->n = 0 first).  0 ok, -1 the
   arena is full (the table is unchanged, v still the caller's). */
int pt_ht_store(pt_stab *t, const pt_kv *k, const pt_kv *v, pt_garbage *g);
/* Lock released: drop what g holds. */
void pt_ht_garbage_drop(pt_garbage *g);

/* ---- dumps: a copy of a table's entries ------------------------------- */
typedef struct pt_ht_entry {
  pt_kv k, v;
} pt_ht_entry;

typedef struct pt_ht_dump {
  size_t n, pos;
  pt_ht_entry *e;            /* one block: entries, then their long strings */
  pid_t pid;                 /* the process holding the table counts */
} pt_ht_dump;

/* Under t's lock: copy its keys, and values too when `values` (a table
   value gets a count).  0 ok, -1 out of memory (d is empty then). */
int pt_ht_dump_take(pt_stab *t, int values, pt_ht_dump *d);
/* Drop what the dump holds; it is empty afterwards.  Safe twice. */
void pt_ht_dump_clear(pt_ht_dump *d);

#endif
