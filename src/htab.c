/* htab.c - the shared hash table: a hash table that lives in the shared
 * arena (plain C, no Lua; the Lua binding is table.c).
 *
 * Layout (all in the arena, linked by offsets):
 *
 *   stab     the table: robust recursive lock, reference count, offset of
 *            its slot block, entry and tombstone counts
 *   slots    one block of slots in two parts.  The array part: slot i holds
 *            the integer key i + 1 or nothing, for keys 1..asize (a power
 *            of two, or 0), sized as Lua sizes its tables' array parts
 *            when the block is rebuilt: keys 1..n in order then touch
 *            adjacent slots, not one at random in the whole block.  The
 *            hash part: a power-of-two array of slots, open addressing
 *            with linear probing, for every other key.  The table's
 *            `slots` word holds the block's offset and both sizes, so one
 *            store publishes all three (htab.h)
 *   slot     ctl word, hash, key, two value words (the same in both parts)
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
 *   delete   storing ctl = TOMB (EMPTY in the array part, where no probe
 *            passes)
 *   grow     a complete new slot block is built aside; storing the table's
 *            slots word publishes it
 *
 * Strings and tables that a change makes unreachable are freed after the
 * publishing store, and whatever a change needs (a string, a count on a
 * nested table) is taken before it: a kill in between can only leak, never
 * leave a reference to freed memory.  The counts (entries, those in the
 * array part, tombstones)
 * follow the publishing store; the next locker of a lock whose owner died
 * (EOWNERDEAD) recounts them from the slots.
 *
 * A get may read without the lock (pt_ht_get_free, htab.h): every change
 * bumps the table's seq first (pt_ht_changing), and so does a repair.
 */
#include "htab.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TAB_MAGIC 0x74616231u                /* "tab1" */

#define TAB(off) PT_HT(off)
#define LSTR(off) PT_HT_LSTR(off)
#define SOFF(w) PT_HT_SOFF(w)
#define SCAP(w) PT_HT_SCAP(w)
#define SLOTS(t) PT_HT_SLOTS(t)

/* ---- keys and values -------------------------------------------------------- */

/* A long string's arena copy, or 0 when the arena is full. */
static pt_off lstr_new(const char *s, size_t len) {
  pt_off o = pt_shm_alloc(offsetof(pt_lstr, data) + len + 1);
  if (!o) return 0;
  LSTR(o)->len = len;
  memcpy(LSTR(o)->data, s, len);
  LSTR(o)->data[len] = 0;
  return o;
}

int pt_ht_prepare(pt_kv *v) {
  if (v->t != PT_V_LSTR) return 0;
  return (v->bits = lstr_new(v->s, v->len)) ? 0 : -1;
}

static void drop_value(int t, uint64_t bits) {
  if (t == PT_V_LSTR) pt_shm_free(bits);
  else if (t == PT_V_TAB) pt_ht_decref(bits);
}

void pt_ht_unprepare(pt_kv *v) {
  drop_value(v->t, v->bits);
  v->t = PT_V_NIL;
}

/* ---- table objects ---------------------------------------------------------- */

/* Free a table whose count reached zero, and the tables that only it held,
   without recursion (the dead table's `count` field links the work list). */
static void tab_destroy(pt_off off) {
  pt_off list = off;
  TAB(off)->count = 0;
  while (list) {
    pt_stab *t = TAB(list);
    pt_off next = t->count, me = list;
    if (t->slots) {
      pt_slot *a = SLOTS(t);
      uint64_t i, n = PT_HT_NSLOTS(t->slots);
      for (i = 0; i < n; i++) {
        pt_slot *sl = &a[i];
        uint32_t c = sl->ctl;
        if (PT_HT_C_STATE(c) != PT_S_FULL) continue;
        if (PT_HT_C_KT(c) == PT_V_LSTR) pt_shm_free(sl->key);
        if (PT_HT_C_VT(c) == PT_V_LSTR) pt_shm_free(sl->val[PT_HT_C_WHICH(c)]);
        else if (PT_HT_C_VT(c) == PT_V_TAB) {
          pt_off child = sl->val[PT_HT_C_WHICH(c)];
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

void pt_ht_decref(pt_off off) {
  if (off && pt_shm_mapped() && pt_shm_decref(&TAB(off)->refs)) tab_destroy(off);
}

void pt_ht_drop(pt_off off, uint64_t gen) {
  if (pt_ht_live(off, gen)) pt_ht_decref(off);
}

int pt_ht_valid(pt_off off, uint64_t gen) {
  return pt_shm_plausible(off, sizeof(pt_stab)) &&
         __atomic_load_n(&TAB(off)->magic, __ATOMIC_RELAXED) == TAB_MAGIC &&
         pt_ht_live(off, gen);
}

/* Recount after a lock holder died: the slots are the truth. */
static void tab_repair(pt_stab *t) {
  uint64_t i, n = 0, an = 0, tb = 0;
  if (t->slots) {
    pt_slot *a = SLOTS(t);
    uint64_t as = PT_HT_ASIZE(t->slots), all = PT_HT_NSLOTS(t->slots);
    for (i = 0; i < all; i++) {
      unsigned s = PT_HT_C_STATE(a[i].ctl);
      if (s == PT_S_FULL) { n++; if (i < as) an++; }
      else if (s == PT_S_TOMB) tb++;
    }
  }
  t->count = n;
  t->acount = an;
  t->tombs = tb;
}

int pt_ht_recover(pt_stab *t) {
  pt_ht_changing(t);                         /* for a reader without the lock */
  tab_repair(t);
  pt_shm_note_recovery();
  pt_lock_consistent(&t->mu);
  return 0;
}

pt_off pt_ht_new(void) {
  pt_off off = pt_shm_alloc_aligned(sizeof(pt_stab), 64);
  pt_stab *t;
  int e;
  if (!off) { errno = ENOMEM; return 0; }
  t = TAB(off);
  memset(t, 0, sizeof *t);
  if (pt_lock_init(&t->mu, 1) != 0) goto fail;
  t->kind = PT_KIND_TABLE;
  t->refs = 1;
  t->magic = TAB_MAGIC;
  pt_shm_gen_publish(&t->gen, pt_shm_new_gen());
  return off;
fail:
  e = errno;
  pt_shm_free_aligned(off);
  errno = e;
  return 0;
}

/* ---- lookup and change (caller holds the lock) -------------------------------- */

int pt_ht_lstr_eq(const pt_slot *sl, const pt_kv *k) {
  const pt_lstr *ls = LSTR(sl->key);
  return ls->len == k->len && memcmp(ls->data, k->s, k->len) == 0;
}

pt_slot *pt_ht_find_hash(pt_stab *t, const pt_kv *k, long *ins) {
  pt_slot *a;
  uint64_t w = t->slots, mask, i, n, want, as;
  uint32_t hash;
  long tomb = -1;
  if (!w) { if (ins) *ins = -1; return NULL; }
  as = PT_HT_ASIZE(w);
  a = PT_SHM_PTR(pt_slot, SOFF(w)) + as;        /* the hash part */
  mask = SCAP(w) - 1;
  hash = pt_ht_key_hash(k);
  want = pt_ht_head_of(k, hash);
  /* a key that is no long string is all in the key word (booleans: 0); a
     long one is never there (its kv's bits are 0, a slot's an offset) */
  for (n = mask + 1, i = hash & mask; n; n--, i = (i + 1) & mask) {
    uint64_t head;
    memcpy(&head, &a[i], 8);
    if ((head & PT_HT_HEAD_MASK) == want &&
        (a[i].key == k->bits || (k->t == PT_V_LSTR && pt_ht_lstr_eq(&a[i], k))))
      return &a[i];
    if (PT_HT_C_STATE(head) == PT_S_EMPTY) {
      if (ins) *ins = (long)as + (tomb >= 0 ? tomb : (long)i);
      return NULL;
    }
    if (PT_HT_C_STATE(head) == PT_S_TOMB && tomb < 0) tomb = (long)i;
  }
  if (ins) *ins = tomb >= 0 ? (long)as + tomb : -1;
  return NULL;
}


static int num_eq(int ta, uint64_t a, int tb, uint64_t b) {
  double d;
  int64_t n;
  if (ta == PT_V_INT && tb == PT_V_INT) return a == b;
  if (ta == PT_V_FLT && tb == PT_V_FLT) {
    double x, y;
    memcpy(&x, &a, 8);
    memcpy(&y, &b, 8);
    return x == y;
  }
  if (ta == PT_V_INT) { n = (int64_t)a; memcpy(&d, &b, 8); }
  else { n = (int64_t)b; memcpy(&d, &a, 8); }
  return d >= -9223372036854775808.0 && d < 9223372036854775808.0 && (int64_t)d == n &&
         floor(d) == d;
}

int pt_ht_slot_equals(const pt_slot *sl, const pt_kv *e) {
  pt_kv v;
  if (!sl) return e->t == PT_V_NIL;
  pt_ht_slot_value(sl, &v);
  switch (e->t) {
    case PT_V_NIL: return 0;
    case PT_V_FALSE: case PT_V_TRUE: return v.t == e->t;
    case PT_V_INT: case PT_V_FLT:
      return (v.t == PT_V_INT || v.t == PT_V_FLT) && num_eq(v.t, v.bits, e->t, e->bits);
    case PT_V_SSTR: return v.t == PT_V_SSTR && v.len == e->len && v.bits == e->bits;
    case PT_V_LSTR: return v.t == PT_V_LSTR && v.len == e->len && memcmp(v.s, e->s, e->len) == 0;
    case PT_V_TAB: return v.t == PT_V_TAB && v.bits == e->bits;
    default: return 0;
  }
}

static int present(pt_stab *t, int64_t n) {
  pt_kv k;
  pt_ht_int_key(&k, (uint64_t)n);
  return pt_ht_find(t, &k, NULL) != NULL;
}

/* Found like Lua's own: double until absent, then bisect, below cap
   (INT64_MAX: up to it; another cap is never reached: taken as absent). */
int64_t pt_ht_border(pt_stab *t, int64_t cap) {
  int64_t i, j;
  if (!present(t, 1)) return 0;
  i = 1;
  j = 2;
  for (;;) {
    if (j >= cap) {
      j = cap;
      if (cap == INT64_MAX && present(t, j)) return j;
      break;
    }
    if (!present(t, j)) break;
    i = j;
    j = j > cap / 2 ? cap : j * 2;
  }
  while (j - i > 1) {
    int64_t m = i + (j - i) / 2;
    if (present(t, m)) i = m;
    else j = m;
  }
  return i;
}

/* A table grows when more than 4/5 of its hash part's slots are used
   (tombstones count).  With 3/4, 200k keys took 512k slots (16 MiB) and
   ran at half the speed they do in 256k (8 MiB): an access is a cache
   miss, and a smaller array misses less and less far (TLB).  The same for
   100k keys (8 MiB against 4).  The price: at 4/5 a lookup of an absent
   key probes about 13 slots (linear probing, just before a growth; 8.5 at
   3/4), in adjacent cache lines of 2 slots each. */
#define LOAD_NUM 4
#define LOAD_DEN 5

static uint64_t cap_for(uint64_t n) {
  uint64_t cap = 8;
  while (cap < n * 2) cap <<= 1;
  return cap;
}

/* The largest array part: 2^40 slots (32 TiB), beyond any arena. */
#define MAXABITS 40

/* The array part for the table's entries and k (about to be inserted;
   NULL: none), sized as Lua sizes its own: the largest power of two n such
   that more than n/2 of the keys 1..n are present, 0 when there is none.
   *in: how many of those entries it will hold. */
static uint64_t array_size(pt_stab *t, const pt_kv *k, uint64_t *in) {
  uint64_t nums[MAXABITS + 1], i, all, sum = 0, best = 0;
  pt_slot *a;
  memset(nums, 0, sizeof nums);
  *in = 0;
  if (k && k->t == PT_V_INT && k->bits - 1 < (1ULL << MAXABITS))
    nums[k->bits == 1 ? 0 : 64 - __builtin_clzll(k->bits - 1)]++;
  if (t->slots) {
    a = SLOTS(t);
    all = PT_HT_NSLOTS(t->slots);
    for (i = 0; i < all; i++) {          /* key 1 counts in nums[0], 2^(b-1)+1..2^b in nums[b] */
      uint32_t c = a[i].ctl;
      uint64_t key = a[i].key;
      if (PT_HT_C_STATE(c) == PT_S_FULL && PT_HT_C_KT(c) == PT_V_INT && key - 1 < (1ULL << MAXABITS))
        nums[key == 1 ? 0 : 64 - __builtin_clzll(key - 1)]++;
    }
  }
  for (i = 0; i <= MAXABITS; i++) {
    sum += nums[i];
    if (sum > (1ULL << i) / 2) { best = 1ULL << i; *in = sum; }
  }
  return best;
}

/* Build a slot block holding every entry (and room for k, about to be
   inserted; NULL: none), with an array part of as slots that will hold in
   of them, and publish it.  0 ok, -1 the arena is full (the table is
   unchanged). */
static int rehash_to(pt_stab *t, const pt_kv *k, uint64_t as, uint64_t in) {
  uint64_t cap = cap_for(t->count + (k != NULL) - in);
  uint64_t old = t->slots, i, mask = cap - 1, an = 0;
  pt_off noff;
  pt_slot *na, *nh;
  if (as + cap > ((uint64_t)1 << 58) / sizeof(pt_slot)) return -1;
  if (!(noff = pt_shm_alloc_aligned((size_t)(as + cap) * sizeof(pt_slot), 64))) return -1;
  na = PT_SHM_PTR(pt_slot, noff);
  nh = na + as;
  memset(na, 0, (size_t)(as + cap) * sizeof(pt_slot));
  if (old) {
    pt_slot *a = PT_SHM_PTR(pt_slot, SOFF(old));
    uint64_t all = PT_HT_NSLOTS(old);
    for (i = 0; i < all; i++) {
      uint64_t j;
      uint32_t c = a[i].ctl;
      if (PT_HT_C_STATE(c) != PT_S_FULL) continue;
      if (PT_HT_C_KT(c) == PT_V_INT && a[i].key - 1 < as) {
        na[a[i].key - 1] = a[i];
        an++;
        continue;
      }
      for (j = a[i].hash & mask; nh[j].ctl; j = (j + 1) & mask) {}
      nh[j] = a[i];
    }
  }
  __atomic_store_n(&t->slots, noff | (uint64_t)__builtin_ctzll(cap) |
                   (as ? (uint64_t)(__builtin_ctzll(as) + 1) << 58 : 0),
                   __ATOMIC_RELEASE);          /* publish */
  t->tombs = 0;
  t->acount = an;
  if (old) pt_shm_free_aligned(SOFF(old));
  return 0;
}

/* The same with the parts sized afresh.  A grown array part may need a
   block the arena cannot give beside the old one (1 MiB: 8192 integer
   keys, 256 KiB, growing to 512) where the array part as it is, with a
   bigger hash part, fits: then the new keys go to the hash part (in: the
   array part's entries, since no key of its range is in the hash part). */
static int rehash(pt_stab *t, const pt_kv *k) {
  uint64_t in, as = array_size(t, k, &in), was = t->slots ? PT_HT_ASIZE(t->slots) : 0;
  if (rehash_to(t, k, as, in) == 0) return 0;
  return as > was ? rehash_to(t, k, was, t->acount) : -1;
}

static void garbage_add(pt_garbage *g, int t, uint64_t bits) {
  if (t == PT_V_LSTR || t == PT_V_TAB) { g->t[g->n] = t; g->bits[g->n] = bits; g->n++; }
}

void pt_ht_garbage_drop(pt_garbage *g) {
  int i;
  for (i = 0; i < g->n; i++) drop_value(g->t[i], g->bits[i]);
  g->n = 0;
}



/* Delete the entry in sl (its key and value go to g). */
static void remove_slot(pt_stab *t, pt_slot *sl, pt_garbage *g) {
  uint32_t c = sl->ctl;
  uint64_t w = t->slots, as = PT_HT_ASIZE(w);
  int in_array = (uint64_t)(sl - SLOTS(t)) < as;   /* no probe passes there */
  if (PT_HT_C_KT(c) == PT_V_LSTR) garbage_add(g, PT_V_LSTR, sl->key);
  __atomic_store_n(&sl->ctl, (c & ~3u) | (in_array ? PT_S_EMPTY : PT_S_TOMB),
                   __ATOMIC_RELEASE);          /* publish */
  t->count--;
  if (in_array) t->acount--;
  else t->tombs++;
  if ((SCAP(w) > 64 && (t->count - t->acount) * 8 < SCAP(w)) || (as > 64 && t->acount * 8 < as))
    (void)rehash(t, NULL);                   /* shrink; harmless if full */
}

/* Put a new entry k = v into the table (k is absent; ins where find said). */
static int insert(pt_stab *t, const pt_kv *k, const pt_kv *v, long ins) {
  pt_slot *sl;
  uint64_t keybits;
  int was_tomb, in_array = ins >= 0 && (uint64_t)ins < PT_HT_ASIZE(t->slots);
  if (!in_array && (!t->slots || (t->count - t->acount + t->tombs + 1) * LOAD_DEN >
                                     SCAP(t->slots) * LOAD_NUM)) {
    if (rehash(t, k) != 0) return -1;
    pt_ht_find(t, k, &ins);
    in_array = ins >= 0 && (uint64_t)ins < PT_HT_ASIZE(t->slots);
  }
  if (ins < 0) return -1;                      /* cannot happen: load <= 4/5 */
  keybits = k->bits;
  if (k->t == PT_V_LSTR && !(keybits = lstr_new(k->s, k->len))) return -1;
  sl = &SLOTS(t)[ins];
  was_tomb = PT_HT_C_STATE(sl->ctl) == PT_S_TOMB;
  __atomic_store_n(&sl->hash, pt_ht_key_hash(k), __ATOMIC_RELAXED);   /* atomic: see */
  __atomic_store_n(&sl->key, keybits, __ATOMIC_RELAXED);              /* pt_ht_get_free */
  __atomic_store_n(&sl->val[0], v->bits, __ATOMIC_RELAXED);
  __atomic_store_n(&sl->ctl,
                   PT_HT_MKCTL(PT_S_FULL, 0, v->t, pt_ht_vlen(v), k->t,
                         k->t == PT_V_SSTR ? (unsigned)k->len : 0),
                   __ATOMIC_RELEASE);          /* publish */
  t->count++;
  if (in_array) t->acount++;
  else if (was_tomb) t->tombs--;
  return 0;
}

int pt_ht_store(pt_stab *t, const pt_kv *k, const pt_kv *v, pt_garbage *g) {
  long ins = -1;
  pt_slot *sl = pt_ht_find(t, k, &ins);
  return pt_ht_store_at(t, k, v, g, sl, ins);
}

int pt_ht_store_at(pt_stab *t, const pt_kv *k, const pt_kv *v, pt_garbage *g, pt_slot *sl,
                   long ins) {
  g->n = 0;
  if (sl || v->t != PT_V_NIL) pt_ht_changing(t);
  if (sl) {
    uint32_t c = sl->ctl;
    garbage_add(g, (int)PT_HT_C_VT(c), sl->val[PT_HT_C_WHICH(c)]);
    if (v->t != PT_V_NIL) pt_ht_slot_set(sl, v);
    else remove_slot(t, sl, g);
    return 0;
  }
  if (v->t == PT_V_NIL) return 0;
  return insert(t, k, v, ins);
}

/* ---- dumps ---------------------------------------------------------------- */

/* A dumped key or value: its string bytes, when long, go to *strs. */
static void dump_kv(pt_kv *x, char **strs) {
  if (x->t != PT_V_LSTR) return;
  memcpy(*strs, x->s, x->len);
  x->s = *strs;
  x->bits = 0;               /* as a key, a long string is its bytes only (find) */
  *strs += x->len;
}

/* Entry from a full slot (strings still in the arena). */
static void entry_of(const pt_slot *sl, int values, pt_ht_entry *e) {
  uint32_t c = sl->ctl;
  e->k.t = (int)PT_HT_C_KT(c);
  e->k.bits = sl->key;
  e->k.len = PT_HT_C_KLEN(c);
  e->k.hash = sl->hash;
  e->k.s = NULL;
  if (e->k.t == PT_V_LSTR) {
    e->k.len = (size_t)LSTR(sl->key)->len;
    e->k.s = LSTR(sl->key)->data;
  }
  if (values) pt_ht_slot_value(sl, &e->v);
  else e->v.t = PT_V_NIL;
}

int pt_ht_dump_take(pt_stab *t, int values, pt_ht_dump *d) {
  pt_slot *a;
  uint64_t i, cap;
  size_t bytes = 0;
  char *strs;
  memset(d, 0, sizeof *d);
  d->pid = getpid();
  if (!t->slots || !t->count) return 0;
  a = SLOTS(t);
  cap = PT_HT_NSLOTS(t->slots);
  for (i = 0; i < cap; i++) {                /* the room the strings need */
    pt_ht_entry e;
    if (PT_HT_C_STATE(a[i].ctl) != PT_S_FULL) continue;
    entry_of(&a[i], values, &e);
    if (e.k.t == PT_V_LSTR) bytes += e.k.len;
    if (e.v.t == PT_V_LSTR) bytes += e.v.len;
  }
  d->e = malloc((size_t)t->count * sizeof(pt_ht_entry) + bytes);
  if (!d->e) return -1;
  strs = (char *)(d->e + t->count);
  for (i = 0; i < cap && d->n < t->count; i++) {
    pt_ht_entry *e = &d->e[d->n];
    if (PT_HT_C_STATE(a[i].ctl) != PT_S_FULL) continue;
    entry_of(&a[i], values, e);
    dump_kv(&e->k, &strs);
    dump_kv(&e->v, &strs);
    if (e->v.t == PT_V_TAB) pt_ht_incref(e->v.bits);
    d->n++;
  }
  return 0;
}

void pt_ht_dump_clear(pt_ht_dump *d) {
  size_t i;
  if (d->pid == getpid())
    for (i = 0; i < d->n; i++)
      if (d->e[i].v.t == PT_V_TAB) pt_ht_decref(d->e[i].v.bits);
  free(d->e);
  d->e = NULL;
  d->n = d->pos = 0;
}
