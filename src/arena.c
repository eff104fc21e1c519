/* arena.c - the shared arena: mapping, allocator, statistics.
 *
 * Plain C: no Lua header, nothing here touches a lua_State.  The robust
 * lock guarding the allocator is lock.c's; the handles that hold counts
 * on arena objects are shm.c's.
 *
 * Mapping.  One MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE mapping, reserved at
 * its full size but committed page by page as it is touched, so a large
 * default costs nothing until used.  Mapped on first use, and at the latest
 * by pt_shm_ensure() before procthread forks: every process procthread
 * spawns shares it, and objects created later are visible to children
 * spawned earlier.
 *
 * Allocator.  Boundary-tag blocks with segregated free lists:
 *
 *   block at offset b (16-aligned), size s (multiple of 16, >= 32):
 *     b+0   prevsize  size of the block before, valid only when it is free
 *     b+8   head      s | USED | PREV_USED
 *     b+16  payload   (free block: next, prev offsets of its free list)
 *
 * Free blocks are coalesced with both neighbours at once; a free block that
 * touches the "top" (the never-used tail of the arena) melts into it.  Free
 * lists: 64 exact bins of 16 bytes for blocks under 1 KiB, then 8 bins per
 * power of two; a request searches from the first bin whose every block is
 * large enough (a bitmap finds the next non-empty bin), so allocation and
 * free are O(1) apart from the bitmap scan.
 *
 * Crash safety.  The allocator is guarded by a robust, process-shared
 * mutex.  Every word the allocator changes is first written to an undo log
 * in the arena header (address, old value), then the log length is bumped,
 * then the word is written; finishing an operation is the single store
 * that resets the log length to 0.  A process killed at any instant inside
 * the allocator leaves a log describing exactly the words it changed: the
 * next locker (EOWNERDEAD) writes the old values back, newest first, and the
 * arena is as it was before that operation.
 */
#include "arena.h"
#include "lock.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

char *pt_shm_base;

#define ARENA_MAGIC 0x7074617265616e61ULL   /* "ptarena" */
#define USED 1ULL
#define PREV_USED 2ULL
#define FLAGS 15ULL
#define MINBLOCK 32
#define NSMALL 64                            /* exact bins: size / 16 < 64 */
#define NBINS (NSMALL + 8 * 48)
#define NWORDS ((NBINS + 63) / 64)
#define LOGMAX 64

typedef struct arena_hdr {
  uint64_t magic;
  uint64_t size;                 /* bytes mapped */
  uint64_t start;                /* first block */
  pthread_mutex_t mu;
  uint64_t top;                  /* [top, size) never allocated or given back */
  uint64_t used, peak, objects;  /* bytes in used blocks; live blocks */
  uint64_t recoveries;           /* locks taken over from dead owners */
  uint64_t alloc_recoveries;     /* ... of which the allocator's own */
  uint64_t gen;                  /* the last generation given out */
  uint64_t bitmap[NWORDS];
  uint64_t bins[NBINS];
  uint64_t nlog;
  struct { uint64_t off, old; } log[LOGMAX];
} arena_hdr;

static pthread_mutex_t map_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t config_size;                 /* 0: environment or default */
static PT_TLS uint64_t failed_need;        /* block size of the last failure */

/* The messages are per thread (no race on them), in a block malloc'd at
   the thread's first, not in thread-local arrays: the static TLS they
   would take is scarce (PT_TLS, arena.h).  No block: the messages say
   less (pt_shm_errmsg's default, pt_shm_full_msg's short form). */
typedef struct {
  char err[PT_SHM_MSGLEN], full[PT_SHM_MSGLEN], check[160];
} msgbufs;
static PT_TLS msgbufs *msgs;
static pthread_key_t msgs_key;
static pthread_once_t msgs_once = PTHREAD_ONCE_INIT;

static void msgs_key_make(void) { (void)pthread_key_create(&msgs_key, free); }

static msgbufs *my_msgs(void) {
  if (!msgs) {
    pthread_once(&msgs_once, msgs_key_make);
    if ((msgs = calloc(1, sizeof *msgs)) != NULL) (void)pthread_setspecific(msgs_key, msgs);
  }
  return msgs;
}

__attribute__((format(printf, 1, 2))) static void set_errmsg(const char *fmt, ...) {
  msgbufs *m = my_msgs();
  va_list ap;
  if (!m) return;
  va_start(ap, fmt);
  vsnprintf(m->err, sizeof m->err, fmt, ap);
  va_end(ap);
}

/* The base is written once (release, under map_mu); other reads are atomic. */
#define BASE __atomic_load_n(&pt_shm_base, __ATOMIC_RELAXED)
#define H ((arena_hdr *)(void *)BASE)
#define WORD(off) (*(uint64_t *)(void *)(BASE + (off)))

/* ---- sizes ---------------------------------------------------------------- */

int pt_shm_parse_size(const char *s, uint64_t *bytes) {
  char *end;
  unsigned long long v;
  uint64_t mul = 1;
  if (!s || !*s || *s < '0' || *s > '9') return -1;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (end == s) return -1;
  if (errno == ERANGE) return -2;
  switch (*end) {
    case 'k': case 'K': mul = 1ULL << 10; end++; break;
    case 'm': case 'M': mul = 1ULL << 20; end++; break;
    case 'g': case 'G': mul = 1ULL << 30; end++; break;
    case 't': case 'T': mul = 1ULL << 40; end++; break;
    default: break;
  }
  if (mul > 1 && (*end == 'i' || *end == 'I')) end++;
  if (mul > 1 && (*end == 'b' || *end == 'B')) end++;
  if (*end) return -1;
  if (v > ~0ULL / mul) return -2;
  *bytes = (uint64_t)v * mul;
  return 0;
}

void pt_shm_format_size(char *out, size_t n, uint64_t b) {
  if (b <= 1) snprintf(out, n, b ? "1 byte" : "0 bytes");      /* 0 divides every unit */
  else if (b % (1ULL << 40) == 0) snprintf(out, n, "%llu TiB", (unsigned long long)(b >> 40));
  else if (b % (1ULL << 30) == 0) snprintf(out, n, "%llu GiB", (unsigned long long)(b >> 30));
  else if (b % (1ULL << 20) == 0) snprintf(out, n, "%llu MiB", (unsigned long long)(b >> 20));
  else if (b % (1ULL << 10) == 0) snprintf(out, n, "%llu KiB", (unsigned long long)(b >> 10));
  else snprintf(out, n, "%llu bytes", (unsigned long long)b);
}

int pt_shm_set_size(uint64_t bytes) {
  int r = 0;
  pthread_mutex_lock(&map_mu);
  if (pt_shm_base) r = -1;
  else __atomic_store_n(&config_size, bytes, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&map_mu);
  return r;
}

int pt_shm_configure_size(uint64_t bytes, char *why, size_t n) {
  uint64_t cur;
  if (pt_shm_size_problem(bytes, why, n)) return -1;
  cur = pt_shm_config_size();
  if (pt_shm_set_size(bytes) != 0 && ((bytes + 4095) & ~4095ULL) != cur) {
    snprintf(why, n, "the shared arena is already mapped (%llu bytes); "
             "configure it before first use", (unsigned long long)cur);
    return -2;
  }
  return 0;
}

/* The address-space limit of this process (RLIMIT_AS, `ulimit -v`), or 0
   when there is none. */
static uint64_t as_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 0;
  return (uint64_t)rl.rlim_cur;
}

/* The default size, cut to a quarter of an address-space limit: the arena
   is only reserved, but a reservation counts against RLIMIT_AS, and the
   rest of the process (interpreter, thread stacks, malloc arenas) needs
   room too. */
static uint64_t default_size(void) {
  uint64_t lim = as_limit() / 4 & ~(PT_SHM_MIN_SIZE - 1), s = PT_SHM_DEFAULT_SIZE;
  if (lim && lim < s) s = lim < PT_SHM_MIN_SIZE ? PT_SHM_MIN_SIZE : lim;
  return s;
}

const char *pt_shm_size_problem(uint64_t bytes, char *out, size_t n) {
  char a[PT_SHM_SIZELEN], b[PT_SHM_SIZELEN];
  uint64_t lim = as_limit();
  if (bytes == ~0ULL) snprintf(a, sizeof a, "a size that overflows 64 bits");
  else pt_shm_format_size(a, sizeof a, bytes);
  if (bytes < PT_SHM_MIN_SIZE)
    snprintf(out, n, "%s is less than 1 MiB, the smallest arena", a);
  else if (bytes > PT_SHM_MAX_SIZE)
    snprintf(out, n, "%s is more than 64 TiB, the largest arena (half the "
             "address space of a process)", a);
  else if (lim && bytes >= lim) {
    pt_shm_format_size(b, sizeof b, lim);
    snprintf(out, n, "%s is more than the address-space limit of this process "
             "(RLIMIT_AS, ulimit -v: %s)", a, b);
  } else
    return NULL;
  return out;
}

/* The size to map: configured, from the environment, or the default.
   0 with errmsg set when the environment's is bad. */
static uint64_t wanted_size(void) {
  const char *env;
  uint64_t v = 0;
  char why[PT_SHM_WHYLEN];
  if ((v = __atomic_load_n(&config_size, __ATOMIC_RELAXED)) != 0) return v;
  env = getenv("PROCTHREAD_SHM_SIZE");
  if (!env || !*env) return default_size();
  switch (pt_shm_parse_size(env, &v)) {
    case -1:
      set_errmsg("PROCTHREAD_SHM_SIZE: '%.60s' is not a size "
               "(write it like 256M or 1G)", env);
      return 0;
    case -2: v = ~0ULL; break;
    default: break;
  }
  if (!pt_shm_size_problem(v, why, sizeof why)) return v;
  set_errmsg("PROCTHREAD_SHM_SIZE: '%.40s' is not a usable "
           "size: %s", env, why);
  return 0;
}

uint64_t pt_shm_config_size(void) {
  uint64_t v;
  if (pt_shm_mapped()) return H->size;
  v = wanted_size();
  return v ? v : default_size();
}

const char *pt_shm_errmsg(void) {
  return msgs && msgs->err[0] ? msgs->err : "shared arena not mapped";
}

void pt_shm_note_recovery(void) {
  if (pt_shm_mapped()) __atomic_add_fetch(&H->recoveries, 1, __ATOMIC_RELAXED);
}

/* ---- the undo log --------------------------------------------------------------- */

static void W(uint64_t off, uint64_t v) {
  uint64_t n = H->nlog;
  if (n >= LOGMAX) abort();                  /* a bug: an operation is bounded */
  H->log[n].off = off;
  H->log[n].old = WORD(off);
  __atomic_store_n(&H->nlog, n + 1, __ATOMIC_RELEASE);
  __atomic_store_n(&WORD(off), v, __ATOMIC_RELEASE);
}

#define HOFF(field) ((uint64_t)offsetof(arena_hdr, field))

static void commit(void) { __atomic_store_n(&H->nlog, 0, __ATOMIC_RELEASE); }

static void undo(void) {
  uint64_t n = H->nlog;
  if (n > LOGMAX) n = LOGMAX;
  while (n > 0) {
    n--;
    WORD(H->log[n].off) = H->log[n].old;
  }
  commit();
}

static void arena_lock(void) {
  int r = pt_lock_acquire(&H->mu);
  if (r == 1) {
    undo();
    __atomic_add_fetch(&H->recoveries, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&H->alloc_recoveries, 1, __ATOMIC_RELAXED);
    pt_lock_consistent(&H->mu);
  } else if (r < 0) {
    abort();                                 /* ENOTRECOVERABLE: cannot happen */
  }
}

static void arena_unlock(void) { pt_lock_release(&H->mu); }

/* ---- bins ---------------------------------------------------------------------- */

static int fls64(uint64_t x) { return 63 - __builtin_clzll(x); }

/* The bin a free block of size s belongs to. */
static unsigned bin_of(uint64_t s) {
  int fl;
  if (s < 16 * NSMALL) return (unsigned)(s >> 4);
  fl = fls64(s);
  return NSMALL + (unsigned)(fl - 10) * 8 + (unsigned)((s >> (fl - 3)) & 7);
}

/* The first bin whose every block holds s bytes. */
static unsigned bin_fit(uint64_t s) {
  int fl;
  unsigned b;
  if (s < 16 * NSMALL) return (unsigned)(s >> 4);
  fl = fls64(s);
  b = bin_of(s);
  if (s & ((1ULL << (fl - 3)) - 1)) b++;     /* above the bin's lower bound */
  return b;
}

#define HEAD(b) ((b) + 8)
#define NEXT(b) ((b) + 16)
#define PREV(b) ((b) + 24)
#define BSIZE(b) (WORD(HEAD(b)) & ~FLAGS)

static void bin_insert(uint64_t b, uint64_t s) {
  unsigned i = bin_of(s);
  uint64_t head = H->bins[i];
  W(NEXT(b), head);
  W(PREV(b), 0);
  if (head) W(PREV(head), b);
  W(HOFF(bins) + 8 * i, b);
  if (!(H->bitmap[i / 64] & (1ULL << (i % 64))))
    W(HOFF(bitmap) + 8 * (i / 64), H->bitmap[i / 64] | (1ULL << (i % 64)));
}

static void bin_remove(uint64_t b, uint64_t s) {
  unsigned i = bin_of(s);
  uint64_t next = WORD(NEXT(b)), prev = WORD(PREV(b));
  if (prev) W(NEXT(prev), next);
  else W(HOFF(bins) + 8 * i, next);
  if (next) W(PREV(next), prev);
  if (!prev && !next)
    W(HOFF(bitmap) + 8 * (i / 64), H->bitmap[i / 64] & ~(1ULL << (i % 64)));
}

static int find_bin(unsigned from) {
  unsigned w = from / 64;
  uint64_t m;
  if (from >= NBINS) return -1;
  m = H->bitmap[w] & (~0ULL << (from % 64));
  for (;;) {
    if (m) return (int)(w * 64 + (unsigned)__builtin_ctzll(m));
    if (++w >= NWORDS) return -1;
    m = H->bitmap[w];
  }
}

/* ---- allocation ---------------------------------------------------------------- */

pt_off pt_shm_alloc(size_t n) {
  uint64_t need, b, s;
  int i;
  if (!pt_shm_mapped() && pt_shm_ensure() != 0) return 0;
  if (n > H->size) { failed_need = ~0ULL; return 0; }
  need = ((uint64_t)n + 16 + 15) & ~15ULL;
  if (need < MINBLOCK) need = MINBLOCK;
  arena_lock();
  i = find_bin(bin_fit(need));
  if (i >= 0) {
    b = H->bins[i];
    s = BSIZE(b);
    bin_remove(b, s);
    if (s - need >= MINBLOCK) {              /* split: the rest stays free */
      uint64_t r = b + need, rs = s - need;
      W(HEAD(r), rs | PREV_USED);
      W(b + s, rs);                          /* prevsize of the block after */
      bin_insert(r, rs);
      W(HEAD(b), need | USED | (WORD(HEAD(b)) & PREV_USED));
    } else {
      need = s;
      W(HEAD(b), WORD(HEAD(b)) | USED);
      W(HEAD(b + s), WORD(HEAD(b + s)) | PREV_USED);
    }
  } else {
    b = H->top;
    if (need > H->size - 16 || b > H->size - 16 - need) {
      arena_unlock();
      failed_need = need;
      return 0;
    }
    W(HEAD(b), need | USED | PREV_USED);     /* the block before top is used */
    W(HOFF(top), b + need);
    W(HEAD(b + need), PREV_USED);            /* top's own head */
  }
  W(HOFF(used), H->used + need);
  W(HOFF(objects), H->objects + 1);
  if (H->used > H->peak) W(HOFF(peak), H->used);
  commit();
  arena_unlock();
  return b + 16;
}

pt_off pt_shm_alloc_aligned(size_t n, size_t align) {
  pt_off raw = pt_shm_alloc(n + align), a;
  if (!raw) return 0;
  a = (raw + 8 + align - 1) & ~((pt_off)align - 1);
  WORD(a - 8) = raw;                          /* where the block begins */
  return a;
}

void pt_shm_free_aligned(pt_off a) {
  if (a && pt_shm_mapped()) pt_shm_free(WORD(a - 8));
}

size_t pt_shm_usable(pt_off off) { return (size_t)(BSIZE(off - 16) - 16); }

int pt_shm_plausible(pt_off off, size_t size) {
  return pt_shm_mapped() && off >= 64 && off % 16 == 0 &&
         off <= pt_shm_config_size() - size;
}

/* Give whole pages of a large free tail back to the system. */
static void trim(uint64_t from, uint64_t to) {
  long pg = sysconf(_SC_PAGESIZE);
  uint64_t a, z;
  if (pg <= 0) return;
  a = (from + 64 + (uint64_t)pg - 1) & ~((uint64_t)pg - 1);
  z = to & ~((uint64_t)pg - 1);
  if (z > a && z - a >= (1ULL << 20)) madvise(BASE + a, z - a, MADV_REMOVE);
}

void pt_shm_free(pt_off off) {
  uint64_t b, s, next, oldtop;
  if (!off || !pt_shm_mapped()) return;
  b = off - 16;
  arena_lock();
  s = BSIZE(b);
  W(HOFF(used), H->used - s);
  W(HOFF(objects), H->objects - 1);
  next = b + s;
  if (next != H->top && !(WORD(HEAD(next)) & USED)) {
    uint64_t ns = BSIZE(next);
    bin_remove(next, ns);
    s += ns;
  }
  if (!(WORD(HEAD(b)) & PREV_USED)) {
    uint64_t ps = WORD(b), prev = b - ps;
    bin_remove(prev, ps);
    b = prev;
    s += ps;
  }
  oldtop = H->top;
  if (b + s == oldtop) {
    W(HOFF(top), b);
    W(HEAD(b), PREV_USED);
  } else {
    W(HEAD(b), s | PREV_USED);
    W(b + s, s);
    W(HEAD(b + s), WORD(HEAD(b + s)) & ~PREV_USED);
    bin_insert(b, s);
  }
  commit();
  if (H->top < oldtop) trim(H->top, oldtop);
  arena_unlock();
}

/* Free bytes (free blocks and the untouched tail, less the headers a block
   needs) and the largest block an allocation could get (lock held). */
static void free_space(uint64_t *total, uint64_t *largest) {
  uint64_t tail = H->size - 16 - H->top, big = tail;
  int i = -1, j;
  *total = H->top - H->start - H->used + tail;
  for (j = find_bin(0); j >= 0; j = find_bin((unsigned)j + 1)) i = j;
  if (i >= 0) {
    uint64_t n;
    for (n = H->bins[i]; n; n = WORD(NEXT(n)))
      if (BSIZE(n) > big) big = BSIZE(n);
  }
  *largest = big;
}

const char *pt_shm_full_msg(void) {
  msgbufs *m = my_msgs();
  char *msg = m ? m->full : NULL, human[PT_SHM_SIZELEN], how[160];
  size_t msgsize = sizeof m->full;
  uint64_t total = 0, largest = 0;
  if (!pt_shm_mapped()) return pt_shm_errmsg();
  if (!msg) return "shared memory exhausted";
  pt_shm_format_size(human, sizeof human, H->size);
  snprintf(how, sizeof how, "raise it with PROCTHREAD_SHM_SIZE=<size> or "
           "pt.configure{ shm_size = <size> } before first use");
  arena_lock();
  free_space(&total, &largest);
  arena_unlock();
  if (failed_need != ~0ULL && total >= failed_need)
    snprintf(msg, msgsize, "shared memory exhausted: %llu bytes free but fragmented; "
             "largest free block %llu bytes, %llu needed (the arena holds %s; free "
             "or release what holds the space between, or %s)",
             (unsigned long long)total, (unsigned long long)(largest > 16 ? largest - 16 : 0),
             (unsigned long long)(failed_need - 16), human, how);
  else
    snprintf(msg, msgsize, "shared memory exhausted (the arena holds %s, %llu bytes "
             "free): %s", human, (unsigned long long)total, how);
  return msg;
}

uint64_t pt_shm_new_gen(void) {
  return __atomic_add_fetch(&H->gen, 1, __ATOMIC_RELAXED);
}

void pt_shm_getstats(pt_shm_stat *st) {
  if (!pt_shm_mapped()) {
    st->size = pt_shm_config_size();
    st->used = st->peak = st->objects = st->recoveries = st->alloc_recoveries = 0;
    st->mapped = 0;
    return;
  }
  arena_lock();
  st->size = H->size;
  st->used = H->used;
  st->peak = H->peak;
  st->objects = H->objects;
  st->recoveries = __atomic_load_n(&H->recoveries, __ATOMIC_RELAXED);
  st->alloc_recoveries = __atomic_load_n(&H->alloc_recoveries, __ATOMIC_RELAXED);
  st->mapped = 1;
  arena_unlock();
}

/* Walk every block and every free list and check they agree with each
   other and with the counters.  Returns NULL, or what is wrong.  For the
   specs: it proves the arena survived whatever they did to it.  Coalescing:
   no two free blocks touch, none touches top, and each listed block is a
   real block (its footer, its PREV_USED and its successor's agree), so the
   free bytes on the lists are exactly the free bytes between the blocks. */
const char *pt_shm_check(void) {
  msgbufs *m = my_msgs();
  char *msg = m ? m->check : NULL;
  size_t msgsize = sizeof m->check;
  uint64_t b, used = 0, objects = 0, nfree = 0, listed = 0, fbytes = 0, lbytes = 0;
  int prev_used = 1;
  unsigned i;
  const char *bad = NULL;
  if (!pt_shm_mapped()) return NULL;
  arena_lock();
  for (b = H->start; b < H->top;) {
    uint64_t head = WORD(HEAD(b)), s = head & ~FLAGS;
    if (s < MINBLOCK || s % 16 || b + s > H->top) { bad = "block size out of bounds"; break; }
    if (((head & PREV_USED) != 0) != prev_used) { bad = "PREV_USED flag disagrees"; break; }
    if (head & USED) {
      used += s;
      objects++;
      prev_used = 1;
    } else {
      if (!prev_used) { bad = "two free blocks side by side"; break; }
      if (WORD(b + s) != s) { bad = "free block footer disagrees"; break; }
      nfree++;
      fbytes += s;
      prev_used = 0;
    }
    b += s;
  }
  if (!bad && b != H->top) bad = "blocks do not end at top";
  if (!bad && !prev_used) bad = "a free block touches top";
  if (!bad && !(WORD(HEAD(H->top)) & PREV_USED)) bad = "top's head lost PREV_USED";
  if (!bad && fbytes != H->top - H->start - used) bad = "free bytes disagree with the blocks";
  if (!bad && used != H->used) bad = "used bytes disagree with the blocks";
  if (!bad && objects != H->objects) bad = "object count disagrees with the blocks";
  for (i = 0; !bad && i < NBINS; i++) {
    uint64_t n = H->bins[i], prev = 0;
    int bit = (H->bitmap[i / 64] >> (i % 64)) & 1;
    if (bit != (n != 0)) bad = "bitmap disagrees with a bin";
    for (; !bad && n; prev = n, n = WORD(NEXT(n))) {
      if (n < H->start || n >= H->top || (WORD(HEAD(n)) & USED)) bad = "free list holds a used block";
      else if (bin_of(BSIZE(n)) != i) bad = "free block in the wrong bin";
      else if (WORD(PREV(n)) != prev) bad = "free list back link broken";
      else if (WORD(n + BSIZE(n)) != BSIZE(n)) bad = "listed free block has no footer";
      else if (!(WORD(HEAD(n)) & PREV_USED)) bad = "listed free block follows a free block";
      else if (n + BSIZE(n) > H->top || (n + BSIZE(n) < H->top &&
               (WORD(HEAD(n + BSIZE(n))) & (PREV_USED | USED)) != USED))
        bad = "listed free block is not followed by a used block";
      else if (++listed > nfree) bad = "free list longer than the free blocks";
      else lbytes += BSIZE(n);
    }
  }
  if (!bad && listed != nfree) bad = "a free block is on no list";
  if (!bad && lbytes != fbytes) bad = "free lists hold other bytes than the free blocks";
  if (!bad && H->nlog != 0) bad = "undo log not empty";
  if (bad && msg) snprintf(msg, msgsize, "%s (at offset %llu)", bad, (unsigned long long)b);
  arena_unlock();
  return bad && msg ? msg : bad;
}

/* ---- mapping ---------------------------------------------------------------- */

/* Map an arena of `size` bytes and lay out its header: the base, or NULL
   with errmsg and errno set (nothing is left mapped then). */
static char *map_arena(uint64_t size) {
  char why[PT_SHM_WHYLEN], human[PT_SHM_SIZELEN];
  arena_hdr *h;
  int e;
  void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    e = errno;
    pt_shm_format_size(human, sizeof human, size);
    if (e == ENOMEM && pt_shm_size_problem(size, why, sizeof why))
      set_errmsg("mmap of the shared arena: %s", why);
    else
      set_errmsg("mmap of the shared arena (%s): %s", human,
               strerror(e));
    goto fail;
  }
  h = p;
  memset(h, 0, sizeof *h);
  h->size = size;
  h->start = (sizeof *h + 15) & ~15ULL;
  h->top = h->start;
  if (pt_lock_init(&h->mu, 0) != 0) {
    e = errno;
    set_errmsg("pthread_mutex_init: %s", strerror(e));
    goto unmap;
  }
  *(uint64_t *)(void *)((char *)p + h->top + 8) = PREV_USED;
  h->magic = ARENA_MAGIC;
  return p;
unmap:
  munmap(p, (size_t)size);
fail:
  errno = e;
  return NULL;
}

int pt_shm_ensure(void) {
  uint64_t size;
  char *p;
  int r = 0, e = 0;
  if (pt_shm_mapped()) return 0;
  pthread_mutex_lock(&map_mu);
  if (pt_shm_base) goto out;
  if (!(size = wanted_size())) {
    e = EINVAL;
    r = -1;
    goto out;
  }
  if (!(p = map_arena((size + 4095) & ~4095ULL))) {
    e = errno;
    r = -1;
    goto out;
  }
  __atomic_store_n(&pt_shm_base, p, __ATOMIC_RELEASE);
out:
  pthread_mutex_unlock(&map_mu);
  if (r) errno = e;
  return r;
}

/* In a new child after fork: a thread of the parent may have held the
   mapping lock; only the forking thread came along, so it starts unlocked
   here. */
__attribute__((hot)) void pt_shm_after_fork_child(void) {   /* PT_AFTER_FORK (pt.h) */
  pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
  map_mu = fresh;
}
