/* arena_test.c - the plain-C floor of shared memory, tested alone: the
 * arena (allocate, free, coalesce, full), its sizes, handles, and the
 * shared hash table (insert, lookup, delete, iterate).  Built without any
 * Lua header or library (CMakeLists.txt: arena_test), run by `make test`.
 * Silent on success; prints each failed check and exits 1. */
#include "htab.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(c) \
  do { \
    if (!(c)) { fprintf(stderr, "arena_test.c:%d: %s\n", __LINE__, #c); failures++; } \
  } while (0)

static pt_shm_stat stats(void) {
  pt_shm_stat st;
  pt_shm_getstats(&st);
  return st;
}

static void test_sizes(void) {
  uint64_t b = 0;
  char out[PT_SHM_SIZELEN], why[PT_SHM_WHYLEN];
  CHECK(pt_shm_parse_size("256M", &b) == 0 && b == 256ULL << 20);
  CHECK(pt_shm_parse_size("64KiB", &b) == 0 && b == 64ULL << 10);
  CHECK(pt_shm_parse_size("12345", &b) == 0 && b == 12345);
  CHECK(pt_shm_parse_size("12 M", &b) == -1);
  CHECK(pt_shm_parse_size("-1", &b) == -1);
  CHECK(pt_shm_parse_size("99999999999999999999", &b) == -2);
  CHECK(pt_shm_parse_size("20000000T", &b) == -2);
  pt_shm_format_size(out, sizeof out, 1ULL << 30);
  CHECK(strcmp(out, "1 GiB") == 0);
  pt_shm_format_size(out, sizeof out, 1536ULL << 10);
  CHECK(strcmp(out, "1536 KiB") == 0);
  CHECK(pt_shm_size_problem(1000, why, sizeof why) != NULL);
  CHECK(pt_shm_size_problem(PT_SHM_MAX_SIZE * 2, why, sizeof why) != NULL);
  CHECK(pt_shm_size_problem(4ULL << 20, why, sizeof why) == NULL);
}

/* Allocate, free, coalesce: freeing two neighbours makes one block that a
   request for both fits into, at the first one's place. */
static void test_alloc(void) {
  pt_shm_stat s0 = stats(), s1;
  pt_off a = pt_shm_alloc(100), b = pt_shm_alloc(200), c = pt_shm_alloc(300), ab, al;
  size_t ua, ub;
  CHECK(a && b && c);
  CHECK(a % 16 == 0 && b % 16 == 0 && c % 16 == 0);
  CHECK(a < b && b < c);
  ua = pt_shm_usable(a);
  ub = pt_shm_usable(b);
  CHECK(ua >= 100 && ub >= 200);
  memset(PT_SHM_PTR(char, a), 0xaa, ua);
  memset(PT_SHM_PTR(char, b), 0xbb, ub);
  s1 = stats();
  CHECK(s1.objects == s0.objects + 3);
  CHECK(s1.used > s0.used);
  pt_shm_free(b);
  pt_shm_free(a);
  CHECK(pt_shm_check() == NULL);
  ab = pt_shm_alloc(ua + ub);                /* only fits the coalesced two */
  CHECK(ab == a);
  pt_shm_free(ab);
  pt_shm_free(c);
  CHECK(pt_shm_check() == NULL);
  s1 = stats();
  CHECK(s1.used == s0.used && s1.objects == s0.objects);
  al = pt_shm_alloc_aligned(50, 4096);
  CHECK(al && al % 4096 == 0);
  pt_shm_free_aligned(al);
  CHECK(pt_shm_alloc((size_t)s1.size) == 0);  /* more than the arena: full */
  CHECK(strstr(pt_shm_full_msg(), "shared memory exhausted") != NULL);
  CHECK(stats().used == s0.used);
}

static int drops;
static void count_drop(pt_off off, uint64_t gen) { (void)off; (void)gen; drops++; }

static void test_handles(void) {
  pt_shm_handle h;
  pt_shm_track(&h, 64, 1, PT_KIND_TABLE, count_drop);
  CHECK(pt_shm_handle_off(&h) == 64);
  pt_shm_release(&h);
  pt_shm_release(&h);                        /* safe twice: drops once */
  CHECK(drops == 1 && pt_shm_handle_off(&h) == 0);
}

static void int_key(pt_kv *k, int64_t n) {
  memset(k, 0, sizeof *k);
  k->t = PT_V_INT;
  k->bits = (uint64_t)n;
  pt_ht_hash(k);
}

static void str_key(pt_kv *k, const char *s) {
  memset(k, 0, sizeof *k);
  pt_ht_string(k, s, strlen(s));
  pt_ht_hash(k);
}

/* t[k] = v (v a prepared value, PT_V_NIL deletes), as the binding does. */
static int store(pt_stab *t, const pt_kv *k, pt_kv *v) {
  pt_garbage g;
  int r;
  if (pt_ht_lock(t, NULL) != 0) return -1;
  r = pt_ht_store(t, k, v, &g);
  pt_ht_unlock(t);
  pt_ht_garbage_drop(&g);
  return r;
}

static void test_table(void) {
  pt_shm_stat s0 = stats();
  pt_off off = pt_ht_new();
  pt_stab *t;
  pt_kv k, v;
  pt_ht_dump d;
  int64_t i, n = 0, sum = 0;
  size_t j;
  const char *longs = "a string longer than eight bytes";
  CHECK(off != 0);
  if (!off) return;
  t = PT_HT(off);
  CHECK(pt_ht_valid(off, pt_ht_gen(off)));
  for (i = 1; i <= 1000; i++) {              /* insert: grows the slot array */
    int_key(&k, i);
    memset(&v, 0, sizeof v);
    v.t = PT_V_INT;
    v.bits = (uint64_t)(i * 10);
    CHECK(store(t, &k, &v) == 0);
  }
  str_key(&k, longs);                        /* long key and long value */
  pt_ht_string(&v, longs, strlen(longs));
  CHECK(pt_ht_prepare(&v) == 0);
  CHECK(store(t, &k, &v) == 0);
  pt_ht_lock(t, NULL);
  CHECK(pt_ht_border(t, INT64_MAX) == 1000 && pt_ht_border(t, (int64_t)1 << 53) == 1000);
  int_key(&k, 500);
  {
    pt_slot *sl = pt_ht_find(t, &k, NULL);   /* lookup */
    CHECK(sl != NULL);
    if (sl) {
      pt_ht_slot_value(sl, &v);
      CHECK(v.t == PT_V_INT && v.bits == 5000);
    }
  }
  str_key(&k, longs);
  {
    pt_slot *sl = pt_ht_find(t, &k, NULL);
    pt_kv e;
    pt_ht_string(&e, longs, strlen(longs));
    CHECK(sl && pt_ht_slot_equals(sl, &e));
  }
  int_key(&k, 1001);
  CHECK(pt_ht_find(t, &k, NULL) == NULL);
  pt_ht_unlock(t);
  for (i = 2; i <= 1000; i += 2) {           /* delete the even keys */
    int_key(&k, i);
    memset(&v, 0, sizeof v);
    CHECK(store(t, &k, &v) == 0);
  }
  str_key(&k, longs);
  memset(&v, 0, sizeof v);
  CHECK(store(t, &k, &v) == 0);
  pt_ht_lock(t, NULL);                       /* iterate */
  CHECK(pt_ht_dump_take(t, 1, &d) == 0);
  pt_ht_unlock(t);
  for (j = 0; j < d.n; j++) {
    CHECK(d.e[j].k.t == PT_V_INT && (d.e[j].k.bits & 1) == 1);
    CHECK(d.e[j].v.t == PT_V_INT && d.e[j].v.bits == d.e[j].k.bits * 10);
    n++;
    sum += (int64_t)d.e[j].k.bits;
  }
  pt_ht_dump_clear(&d);
  CHECK(n == 500 && sum == 500 * 500);
  CHECK(pt_shm_check() == NULL);
  pt_ht_decref(off);                         /* the last count: all freed */
  CHECK(!pt_ht_valid(off, 1));
  CHECK(pt_shm_check() == NULL);
  CHECK(stats().used == s0.used && stats().objects == s0.objects);
}

int main(void) {
  test_sizes();
  if (pt_shm_set_size(4ULL << 20) != 0 || pt_shm_ensure() != 0) {
    fprintf(stderr, "arena_test: cannot map the arena: %s\n", pt_shm_errmsg());
    return 1;
  }
  CHECK(pt_shm_set_size(8ULL << 20) == -1);   /* mapped: too late */
  CHECK(stats().mapped && stats().size == 4ULL << 20);
  test_alloc();
  test_handles();
  test_table();
  if (failures) fprintf(stderr, "arena_test: %d check(s) failed\n", failures);
  return failures ? 1 : 0;
}
