/* htab.h - the shared hash table (plain C, no Lua): a hash table that
 * lives in the shared arena, its keys and values, its lock, and dumps
 * (copies of its entries).  The Lua binding is table.c.  See htab.c for
 * the layout and the crash-consistency protocol. */
#ifndef PT_HTAB_H
#define PT_HTAB_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "shm.h"
#include "wait.h"

/* Types of keys and values. */
enum { PT_V_NIL, PT_V_FALSE, PT_V_TRUE, PT_V_INT, PT_V_FLT, PT_V_SSTR, PT_V_LSTR, PT_V_TAB };

typedef struct pt_slot {
  union {
    struct { uint32_t ctl, hash; };
    uint64_t head;        /* both, for one load (pt_ht_lookup_hash) */
  };
  uint64_t key;
  uint64_t val[2];
} pt_slot;

/* The first cache line holds all an ordinary operation touches besides
   its slot: the lock, the slot array word, the count and seq (a set that
   bumped seq on the second line ran 15% slower, scrambled keys). */
typedef struct pt_stab {
  pthread_mutex_t mu;
  uint64_t slots;         /* the slot block and its two parts: PT_HT_SOFF... */
  uint64_t count;         /* entries (both parts) */
  uint64_t seq;           /* bumped by every change, before it: see pt_ht_get_free */
  uint32_t magic, kind;
  uint64_t refs;
  uint64_t gen;           /* see pt_shm_new_gen; 0 once destroyed */
  pt_cond waiters;        /* pt.wait's sleepers; guarded by mu */
  uint64_t acount;        /* entries in the array part */
  uint64_t tombs;         /* the hash part's tombstones */
} pt_stab;

#define PT_HT(off) PT_SHM_PTR(pt_stab, off)
/* The seqlock's fences (pt_ht_get_free).  ThreadSanitizer knows no fence
   (gcc warns); on x86 both are compiler barriers only, as this is. */
#if defined(__SANITIZE_THREAD__)
#define PT_HT_FENCE(order) __atomic_signal_fence(order)
#else
#define PT_HT_FENCE(order) __atomic_thread_fence(order)
#endif

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


/* ---- inside a table (for htab.c, and inline for the binding's hot paths) */
enum { PT_S_EMPTY, PT_S_FULL, PT_S_TOMB };

#define PT_HT_C_STATE(c) ((c) & 3u)
#define PT_HT_C_WHICH(c) (((c) >> 2) & 1u)
#define PT_HT_C_VT(c) (((c) >> 3) & 15u)
#define PT_HT_C_VLEN(c) (((c) >> 7) & 15u)
#define PT_HT_C_KT(c) (((c) >> 11) & 15u)
#define PT_HT_C_KLEN(c) (((c) >> 15) & 15u)
#define PT_HT_MKCTL(st, w, vt, vl, kt, kl) \
  ((uint32_t)(st) | ((uint32_t)(w) << 2) | ((uint32_t)(vt) << 3) | \
   ((uint32_t)(vl) << 7) | ((uint32_t)(kt) << 11) | ((uint32_t)(kl) << 15))

/* A table's `slots` word names its slot block, in two parts: the array
   part, slot i for the integer key i + 1 (1 <= key <= asize), then the
   hash part.  Bits 6..57: the block's offset (64-aligned); bits 0..5:
   log2 of the hash part's capacity; bits 58..63: 0 (no array part) or 1 +
   log2(asize).  One store publishes all three. */
#define PT_HT_SOFF(w) ((w) & 0x03ffffffffffffc0ULL)
#define PT_HT_SCAP(w) (1ULL << ((w) & 63))
#define PT_HT_ASIZE(w) ((1ULL << ((w) >> 58)) >> 1)
#define PT_HT_NSLOTS(w) (PT_HT_ASIZE(w) + PT_HT_SCAP(w))
#define PT_HT_SLOTS(t) PT_SHM_PTR(pt_slot, PT_HT_SOFF((t)->slots))
static inline uint32_t pt_ht_mix(uint64_t h);
/* A key's hash.  An integer key's is made here, when it is needed: a key
   of the array part never needs it (k->hash is not set for an integer). */
static inline uint32_t pt_ht_key_hash(const pt_kv *k) {
  return k->t == PT_V_INT ? pt_ht_mix(k->bits) : k->hash;
}
/* The slot a key belongs in first: its own in the array part, or the
   hash part's slot where its probe begins. */
static inline uint64_t pt_ht_home(uint64_t w, const pt_kv *k) {
  uint64_t as = PT_HT_ASIZE(w);
  if (k->t == PT_V_INT && k->bits - 1 < as) return k->bits - 1;
  return as + (pt_ht_key_hash(k) & (PT_HT_SCAP(w) - 1));
}

typedef struct pt_lstr {
  uint64_t len;
  char data[8];
} pt_lstr;

#define TAB(off) PT_HT(off)
#define PT_HT_LSTR(off) PT_SHM_PTR(pt_lstr, off)


static inline uint32_t pt_ht_mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return (uint32_t)h;
}

/* Up to 8 bytes as a zero-padded little-endian word, without a memcpy call
   of variable length. */
static inline uint64_t pt_ht_load_small(const char *s, size_t n) {
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

#define PT_HT_SEED 0x9e3779b97f4a7c15ULL
static inline uint32_t pt_ht_hash_bytes(const char *s, size_t n) {
  uint64_t h = PT_HT_SEED ^ (uint64_t)n, w;
  while (n > 8) {
    memcpy(&w, s, 8);
    h = (h ^ w) * 0x100000001b3ULL;
    h ^= h >> 29;
    s += 8; n -= 8;
  }
  return pt_ht_mix(h ^ pt_ht_load_small(s, n));
}

/* ---- keys and values -------------------------------------------------- */
/* A string as a kv (no arena memory taken: a long one is PT_V_LSTR with s). */
static inline void pt_ht_string(pt_kv *v, const char *s, size_t len) {
  v->s = s;
  v->len = len;
  v->bits = 0;
  if (len <= 8) {
    v->t = PT_V_SSTR;
    v->bits = pt_ht_load_small(s, len);
  } else {
    v->t = PT_V_LSTR;
  }
}
/* A string kv's hash: a short one's from the word pt_ht_string loaded
   (what pt_ht_hash_bytes makes of up to 8 bytes, without loading them
   again). */
static inline uint32_t pt_ht_str_hash(const pt_kv *k) {
  return k->t == PT_V_SSTR ? pt_ht_mix(PT_HT_SEED ^ (uint64_t)k->len ^ k->bits)
                           : pt_ht_hash_bytes(k->s, k->len);
}
/* A string as a key, hashed (pt_ht_string then pt_ht_hash). */
static inline void pt_ht_string_key(pt_kv *k, const char *s, size_t len) {
  pt_ht_string(k, s, len);
  k->hash = pt_ht_str_hash(k);
}
/* A float key: an integral one is the integer key (as Lua's tables say).
   In range, the truncation is exact only for an integral d (beyond 2^53
   every double is integral); NaN fails the range test. */
static inline void pt_ht_number_key(pt_kv *k, double d) {
  if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && (double)(int64_t)d == d) {
    k->t = PT_V_INT;
    k->bits = (uint64_t)(int64_t)d;
  } else {
    k->t = PT_V_FLT;
    memcpy(&k->bits, &d, 8);
  }
}
/* An integer as a value, or as a key (its hash: pt_ht_key_hash). */
static inline void pt_ht_int_value(pt_kv *v, uint64_t n) {
  v->t = PT_V_INT;
  v->bits = n;
  v->s = NULL;
  v->len = 0;
}
static inline void pt_ht_int_key(pt_kv *k, uint64_t n) {
  pt_ht_int_value(k, n);
  k->hash = 0;
}
/* Fill k->hash: the last step of making a key (an integer's is made
   when needed: pt_ht_key_hash). */
static inline void pt_ht_hash(pt_kv *k) {
  switch (k->t) {
    case PT_V_FALSE: k->hash = 0x5bd1e995u; break;
    case PT_V_TRUE: k->hash = 0x1b873593u; break;
    case PT_V_INT: k->hash = 0; break;
    case PT_V_FLT: k->hash = pt_ht_mix(k->bits ^ 0x6a09e667f3bcc909ULL); break;
    default: k->hash = pt_ht_str_hash(k); break;
  }
}
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

/* The lock, for plain C users (test/arena_test.c; the binding waits
   cancellably with pt_st_lock): 0 held (a dead owner's table repaired), -1
   errno (ECANCELED when cancelled() said so; see pt_lock_acquire_spin).
   Recursive. */
static inline int pt_ht_lock(pt_stab *t, int (*cancelled)(void));
/* (pthread_mutex_unlock itself, as pt_lock_release is: one call less on
   every operation.) */
static inline void pt_ht_unlock(pt_stab *t) { pthread_mutex_unlock(&t->mu); }
/* The lock was taken over from a dead owner: recount the table, make the
   lock consistent; returns 0. */
int pt_ht_recover(pt_stab *t);
static inline int pt_ht_lock(pt_stab *t, int (*cancelled)(void)) {
  int r = pt_lock_acquire_spin(&t->mu, cancelled);
  return r == 1 ? pt_ht_recover(t) : r;
}
/* Start fetching the slot a key hashes to while the lock is being taken
   (a hint only: the slot array may change before the lock is ours, and a
   prefetch never faults). */
static inline void pt_ht_prefetch(pt_stab *t, const pt_kv *k) {
  uint64_t w = __atomic_load_n(&t->slots, __ATOMIC_RELAXED);
  if (w) __builtin_prefetch(PT_SHM_PTR(pt_slot, PT_HT_SOFF(w)) + pt_ht_home(w, k), 1);
}

/* ---- under the lock --------------------------------------------------- */
/* k's slot, or NULL; then *ins (when ins is not NULL): the index in the
   slot block of the slot to insert it into, -1 when there is no room.
   Inline for a key of the array part and for a lookup alone (ins NULL:
   pt_ht_lookup_hash; every caller's ins is a constant, so the choice is
   the compiler's); pt_ht_find_hash for the others. */
pt_slot *pt_ht_find_hash(pt_stab *t, const pt_kv *k, long *ins);
/* The slot's first word: ctl in its low half, the hash in its high half
   (little-endian), read with one load and compared in one go with what a
   full slot holding k's type and length would say. */
#define PT_HT_HEAD_MASK (3ULL | (15ULL << 11) | (15ULL << 15) | (0xffffffffULL << 32))
static inline uint64_t pt_ht_head_of(const pt_kv *k, uint32_t hash) {
  return (uint64_t)PT_S_FULL | ((uint64_t)k->t << 11) |
         ((uint64_t)(k->t == PT_V_SSTR ? k->len : 0) << 15) | ((uint64_t)hash << 32);
}
/* Does the full slot sl, whose head matched, hold the long string k? */
int pt_ht_lstr_eq(const pt_slot *sl, const pt_kv *k);
/* A lookup alone in the hash part (w: the table's slots word, not 0): no
   insertion slot to find, no tombstone to remember; a walk of a pointer.
   A key that is no long string is all in the key word (booleans: 0); a
   long one is never there (its kv's bits are 0, a slot's an offset).  At
   most every slot is probed (there is always an empty one: the load stays
   <= 4/5). */
static inline pt_slot *pt_ht_lookup_hash(uint64_t w, const pt_kv *k) {
  pt_slot *a = PT_SHM_PTR(pt_slot, PT_HT_SOFF(w)) + PT_HT_ASIZE(w), *end = a + PT_HT_SCAP(w), *p;
  uint32_t hash = pt_ht_key_hash(k);
  uint64_t want = pt_ht_head_of(k, hash), bits = k->bits, n = PT_HT_SCAP(w);
  for (p = a + (hash & (PT_HT_SCAP(w) - 1));;) {
    /* atomic loads (plain movs): a reader without the lock races the
       holder's stores by design (pt_ht_get_free) */
    uint64_t head = __atomic_load_n(&p->head, __ATOMIC_RELAXED);
    if ((head & PT_HT_HEAD_MASK) == want &&
        (__atomic_load_n(&p->key, __ATOMIC_RELAXED) == bits || (k->t == PT_V_LSTR && pt_ht_lstr_eq(p, k))))
      return p;
    if (PT_HT_C_STATE(head) == PT_S_EMPTY || --n == 0) return NULL;
    if (++p == end) p = a;
  }
}
static inline pt_slot *pt_ht_find(pt_stab *t, const pt_kv *k, long *ins) {
  uint64_t w = t->slots;
  if (k->t == PT_V_INT && k->bits - 1 < PT_HT_ASIZE(w)) {
    pt_slot *sl = PT_SHM_PTR(pt_slot, PT_HT_SOFF(w)) + (k->bits - 1);
    if (PT_HT_C_STATE(sl->ctl) == PT_S_FULL) return sl;
    if (ins) *ins = (long)(k->bits - 1);
    return NULL;
  }
  if (!ins) return w ? pt_ht_lookup_hash(w, k) : NULL;
  return pt_ht_find_hash(t, k, ins);
}
/* The value in a slot (a long string's s points into the arena; a table
   gets no count). */
static inline void pt_ht_slot_value(const pt_slot *sl, pt_kv *v) {
  uint32_t c = sl->ctl;
  v->t = (int)PT_HT_C_VT(c);
  v->bits = sl->val[PT_HT_C_WHICH(c)];
  v->len = PT_HT_C_VLEN(c);
  v->s = NULL;
  if (v->t == PT_V_LSTR) {
    const pt_lstr *ls = PT_HT_LSTR(v->bits);
    v->len = (size_t)ls->len;
    v->s = ls->data;
  }
}
/* A lookup without the lock (a seqlock read): 1 with v (PT_V_NIL: absent)
   when the table held k = v at one instant while its lock was free, 0 when
   the lock must be taken instead.  The lock's word is read: free only
   when 0, so that a holder inside pt.locked (or one that died: the word
   keeps the owner-died bit until a locker repairs the table) sends every
   reader to the lock, and seq, bumped before each change's first store
   (pt_ht_changing), is the same after the read as before it: nothing was
   changed meanwhile.  What is read meanwhile may be torn, or a freed slot
   block (still inside the arena, whose mapping never goes): it is only
   compared, never followed, and thrown away when seq moved.  So a long
   string (key or value) or a table value is never read here: 0.  glibc
   only (the mutex word's place); elsewhere always 0. */
static inline int pt_ht_get_free(const pt_stab *t, const pt_kv *k, pt_kv *v) {
#if defined(__GLIBC__)
  uint64_t s = __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE), w;
  const pt_slot *sl;
  if (k->t == PT_V_LSTR ||
      __atomic_load_n((const uint32_t *)&t->mu.__data.__lock, __ATOMIC_ACQUIRE) != 0)
    return 0;
  w = __atomic_load_n(&t->slots, __ATOMIC_ACQUIRE);
  v->t = PT_V_NIL;
  v->s = NULL;
  if (!w) sl = NULL;
  else if (k->t == PT_V_INT && k->bits - 1 < PT_HT_ASIZE(w)) {
    sl = PT_SHM_PTR(pt_slot, PT_HT_SOFF(w)) + (k->bits - 1);
    if (PT_HT_C_STATE(__atomic_load_n(&sl->ctl, __ATOMIC_RELAXED)) != PT_S_FULL) sl = NULL;
  } else {
    sl = pt_ht_lookup_hash(w, k);
  }
  if (sl) {
    uint32_t c = __atomic_load_n(&sl->ctl, __ATOMIC_RELAXED);
    v->t = (int)PT_HT_C_VT(c);
    v->bits = __atomic_load_n(&sl->val[PT_HT_C_WHICH(c)], __ATOMIC_RELAXED);
    v->len = PT_HT_C_VLEN(c);
  }
  PT_HT_FENCE(__ATOMIC_ACQUIRE);   /* the reads before seq's second load */
  return v->t < PT_V_LSTR && __atomic_load_n(&t->seq, __ATOMIC_RELAXED) == s;
#else
  (void)t; (void)k; (void)v;
  return 0;
#endif
}
/* Replace the value of a slot by a prepared value. */
static inline unsigned pt_ht_vlen(const pt_kv *v) { return v->t == PT_V_SSTR ? (unsigned)v->len : 0; }
static inline void pt_ht_slot_set(pt_slot *sl, const pt_kv *v) {
  uint32_t c = sl->ctl;
  unsigned w = !PT_HT_C_WHICH(c);
  __atomic_store_n(&sl->val[w], v->bits, __ATOMIC_RELAXED);
  __atomic_store_n(&sl->ctl, PT_HT_MKCTL(PT_S_FULL, w, v->t, pt_ht_vlen(v), PT_HT_C_KT(c), PT_HT_C_KLEN(c)),
                   __ATOMIC_RELEASE);          /* publish */
}
/* Under the lock, before a change's first store: wake pt.wait's sleepers
   (one relaxed load when there are none; see pt_cond), and bump seq, so
   that a read without the lock (pt_ht_get_free) that overlaps the change
   knows it. */
static inline void pt_ht_changing(pt_stab *t) {
  if (__atomic_load_n(&t->waiters.sleeping, __ATOMIC_RELAXED)) pt_cond_wake(&t->waiters);
  /* release: a reader that sees the bump sees the lock taken too (the
     lock's store comes before it; x86 keeps that order anyway, a weaker
     CPU need not: the reader could then see the new seq with the lock
     word still free and read the change half made) */
  __atomic_store_n(&t->seq, t->seq + 1, __ATOMIC_RELEASE);
  PT_HT_FENCE(__ATOMIC_RELEASE);   /* the bump before the change's stores */
}
/* Is the value in sl (absence when NULL) equal to e, as == says? */
int pt_ht_slot_equals(const pt_slot *sl, const pt_kv *e);
/* A border of the table (as # says). */
int64_t pt_ht_border(pt_stab *t, int64_t cap);

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
/* The same once pt_ht_find(t, k, &ins) said sl (and ins). */
int pt_ht_store_at(pt_stab *t, const pt_kv *k, const pt_kv *v, pt_garbage *g, pt_slot *sl,
                   long ins);
/* Does the value in the full slot sl own nothing (no long string, no
   table), so that replacing it leaves nothing to drop? */
static inline int pt_ht_slot_plain(const pt_slot *sl) { return PT_HT_C_VT(sl->ctl) < PT_V_LSTR; }
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
