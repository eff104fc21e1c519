/* wait.c - the lock-and-wait module (see wait.h).  Plain C, no Lua.
 *
 * Which kernel call, and why:
 *
 *   no cancel flag   FUTEX_WAIT_BITSET, shared (no FUTEX_PRIVATE_FLAG:
 *                    the word may be seen by other processes), with an
 *                    absolute CLOCK_MONOTONIC deadline.  A timed futex wait
 *                    interrupted by a handled signal returns EINTR even
 *                    under SA_RESTART, so Ctrl-C reaches the caller (PT_INTR)
 *                    on every Lua; "forever" is therefore a deadline a day
 *                    away, renewed (one wake-up a day is not a poll).
 *   a cancel flag    futex_waitv (Linux 5.16) over the word and the flag:
 *                    the kernel checks both before it sleeps, so a cancel
 *                    set after the caller looked still ends the wait.  The
 *                    cancel signal (SA_RESTART) restarts the call, which then
 *                    sees the flag.  Without futex_waitv (ENOSYS) the flag
 *                    is looked at every 50 ms instead.
 */
#include "wait.h"
#include "arena.h"                /* PT_TLS */

#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef FUTEX_32
#define FUTEX_32 2
#endif
#ifndef FUTEX_PRIVATE_FLAG
#define FUTEX_PRIVATE_FLAG 128
#endif

#define DAY 86400.0
#define SLICE 0.05
#define SPIN_NS 10000           /* the longest spin before a sleep: about a
                                   futex sleep and wake-up (a spin of what
                                   blocking costs is never worse than 2x) */
#define SPIN_STEP 32

/* ---- the clock -------------------------------------------------------------- */

double pt_clock_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double pt_deadline(double timeout) {
  if (!(timeout >= 0) || timeout > 100 * 365 * DAY) return PT_FOREVER;
  return pt_clock_now() + timeout;
}

static struct timespec to_timespec(double t) {
  struct timespec ts;
  ts.tv_sec = (time_t)t;
  ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
  if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
  if (ts.tv_nsec < 0) ts.tv_nsec = 0;
  return ts;
}

/* ---- futex waits ------------------------------------------------------------ */

static int cancelled(const volatile int *cancel) {
  return cancel && __atomic_load_n(cancel, __ATOMIC_ACQUIRE);
}

/* The deadline of one kernel sleep: the caller's, or at most `cap` away. */
static double step_until(double deadline, double cap) {
  double limit = pt_clock_now() + cap;
  return (deadline < 0 || deadline > limit) ? limit : deadline;
}

/* errno of a futex call as a status; EAGAIN: the word had changed. */
static int status_of(int err) {
  switch (err) {
    case EAGAIN: return PT_OK;
    case ETIMEDOUT: return PT_TIMEOUT;
    case EINTR: return PT_INTR;
    default: errno = err; return PT_ERR;
  }
}

/* One FUTEX_WAIT_BITSET sleep up to `until` (absolute, monotonic). */
static int wait_bitset(const uint32_t *word, uint32_t expected, double until) {
  struct timespec ts = to_timespec(until);
  if (syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, &ts, NULL,
              FUTEX_BITSET_MATCH_ANY) == 0)
    return PT_OK;
  return status_of(errno);
}

static int have_waitv = 1;      /* atomic: cleared once the kernel says ENOSYS */

/* One futex_waitv sleep over the words and the cancel flag. */
static int wait_vector(const uint32_t *const *words, const uint32_t *expected,
                       int n, double deadline, const volatile int *cancel,
                       int *which) {
  struct futex_waitv v[PT_FUTEX_MAXV + 1];
  struct timespec ts, *tsp = NULL;
  int i, m = 0;
  long r;
  memset(v, 0, sizeof v);
  for (i = 0; i < n; i++, m++) {
    v[m].val = expected[i];
    v[m].uaddr = (uint64_t)(uintptr_t)words[i];
    v[m].flags = FUTEX_32;                       /* shared: no PRIVATE */
  }
  if (cancel) {
    v[m].val = 0;
    v[m].uaddr = (uint64_t)(uintptr_t)cancel;
    v[m].flags = FUTEX_32 | FUTEX_PRIVATE_FLAG;
    m++;
  }
  if (deadline >= 0) { ts = to_timespec(deadline); tsp = &ts; }
  r = syscall(SYS_futex_waitv, v, (unsigned)m, 0, tsp, CLOCK_MONOTONIC);
  if (r >= 0) {
    if (which) *which = r < n ? (int)r : -1;
    return cancelled(cancel) ? PT_CANCELLED : PT_OK;
  }
  if (errno == ENOSYS) {
    __atomic_store_n(&have_waitv, 0, __ATOMIC_RELAXED);
    return PT_ERR;
  }
  return cancelled(cancel) ? PT_CANCELLED : status_of(errno);
}

/* Any number of words without futex_waitv, or one word without a cancel
   flag: sleep on words[0] in steps (a day; 50 ms when there is a cancel
   flag or more than one word to watch), re-checking all in between. */
static int wait_steps(const uint32_t *const *words, const uint32_t *expected,
                      int n, double deadline, const volatile int *cancel,
                      int *which) {
  double cap = (cancel || n > 1) ? SLICE : DAY;
  for (;;) {
    int i, r;
    if (cancelled(cancel)) return PT_CANCELLED;
    for (i = 0; i < n; i++)
      if (__atomic_load_n(words[i], __ATOMIC_ACQUIRE) != expected[i]) {
        if (which) *which = i;
        return PT_OK;
      }
    if (deadline >= 0 && pt_clock_now() >= deadline) return PT_TIMEOUT;
    r = wait_bitset(words[0], expected[0], step_until(deadline, cap));
    if (r == PT_TIMEOUT && (deadline < 0 || pt_clock_now() < deadline)) continue;
    if (r == PT_OK && which) *which = 0;
    if (r == PT_OK || r == PT_INTR) return cancelled(cancel) ? PT_CANCELLED : r;
    return r;
  }
}

int pt_futex_waitv(const uint32_t *const *words, const uint32_t *expected,
                   int n, double deadline, const volatile int *cancel,
                   int *which) {
  if (which) *which = -1;
  if (n < 1 || n > PT_FUTEX_MAXV) { errno = EINVAL; return PT_ERR; }
  if (cancelled(cancel)) return PT_CANCELLED;
  if ((cancel || n > 1) && __atomic_load_n(&have_waitv, __ATOMIC_RELAXED)) {
    int r = wait_vector(words, expected, n, deadline, cancel, which);
    if (r != PT_ERR || __atomic_load_n(&have_waitv, __ATOMIC_RELAXED)) return r;
  }
  return wait_steps(words, expected, n, deadline, cancel, which);
}

int pt_futex_wait(const uint32_t *word, uint32_t expected, double deadline,
                  const volatile int *cancel) {
  return pt_futex_waitv(&word, &expected, 1, deadline, cancel, NULL);
}

static int interrupt_moved(const pt_wake *w) {
  return w && w->intr && __atomic_load_n(w->intr, __ATOMIC_ACQUIRE) != w->intr_expected;
}

int pt_futex_wait_on(const uint32_t *const *words, const uint32_t *expected, int n,
                     double deadline, const pt_wake *w) {
  const uint32_t *ws[PT_FUTEX_MAXV];
  uint32_t vs[PT_FUTEX_MAXV];
  int i, r;
  if (!w || !w->intr) return pt_futex_waitv(words, expected, n, deadline, w ? w->cancel : NULL, NULL);
  if (n < 1 || n >= PT_FUTEX_MAXV) { errno = EINVAL; return PT_ERR; }
  for (i = 0; i < n; i++) {          /* mostly one: no memcpy call */
    ws[i] = words[i];
    vs[i] = expected[i];
  }
  ws[n] = w->intr;
  vs[n] = w->intr_expected;
  r = pt_futex_waitv(ws, vs, n + 1, deadline, w->cancel, NULL);
  if ((r == PT_OK || r == PT_INTR) && interrupt_moved(w)) return PT_INTR;
  return r;
}

void pt_futex_wake(const uint32_t *word, int n) {
  syscall(SYS_futex, word, FUTEX_WAKE, n < 0 ? INT_MAX : n, NULL, NULL, 0);
}

void pt_seq_bump_wake(uint32_t *word) {
  __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
  pt_futex_wake(word, -1);
}

void pt_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* 1 when this process may run on more than one CPU.  Asked once: a spin
   on one CPU only delays the side it waits for.  (The static functions
   here are what this file calls: a call of an exported one goes through
   the PLT.) */
static int spin_useful(void) {
  static int cpus;              /* atomic: 0 until asked */
  int n = __atomic_load_n(&cpus, __ATOMIC_RELAXED);
  if (!n) {
    cpu_set_t set;
    n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    __atomic_store_n(&cpus, n > 0 ? n : 1, __ATOMIC_RELAXED);
  }
  return n > 1;
}

int pt_spin_useful(void) { return spin_useful(); }

/* Spin up to SPIN_NS by the clock (a pause costs from a few to a hundred
   cycles, by CPU model), looking at the clock every SPIN_STEP pauses. */
static __attribute__((noinline)) int spin(int (*ready)(void *), void *arg) {
  double until = 0;
  int i;
  for (i = 1;; i++) {
    pt_cpu_relax();
    if (ready(arg)) return 1;
    if (i % SPIN_STEP) continue;
    if (!until) until = pt_clock_now() + SPIN_NS * 1e-9;
    else if (pt_clock_now() >= until) return 0;
  }
}

/* The first look costs a call: often what the caller waits for is there. */
static inline int spin_until(int (*ready)(void *), void *arg) {
  return ready(arg) || (spin_useful() && spin(ready, arg));
}

int pt_spin_until(int (*ready)(void *), void *arg) { return spin_until(ready, arg); }

int pt_yield_until(int (*ready)(void *), void *arg, double seconds, double deadline) {
  double until;
  if (ready(arg)) return 1;
  if (!spin_useful()) return 0;
  until = pt_clock_now() + seconds;
  if (deadline >= 0 && deadline < until) until = deadline;
  do {
    sched_yield();
    if (ready(arg)) return 1;
  } while (pt_clock_now() < until);
  return 0;
}

/* A word spin: until the word (64 bits wide, or 32) no longer holds v. */
typedef struct watch {
  const void *word;
  uint64_t v;
  int wide;
} watch;

static int moved(void *a) {
  const watch *w = (const watch *)a;
  uint64_t now = w->wide ? __atomic_load_n((const uint64_t *)w->word, __ATOMIC_ACQUIRE)
                         : __atomic_load_n((const uint32_t *)w->word, __ATOMIC_ACQUIRE);
  return now != w->v;
}

static int spin_while(const void *word, uint64_t v, int wide) {
  watch w;
  w.word = word;
  w.v = v;
  w.wide = wide;
  return spin_until(moved, &w);
}

int pt_spin_while(const uint64_t *word, uint64_t v) { return spin_while(word, v, 1); }

/* ---- robust locks ----------------------------------------------------------- */

/* Robust mutexes are lock.c's (pt_lock_init); these take them.  The status
   of a lock or trylock that returned r: EOWNERDEAD means this thread holds
   m now, inconsistent: repair it and mark it consistent. */
static int locked(pthread_mutex_t *m, int r, void (*repair)(void *), void *arg) {
  if (r == 0) return PT_OK;
  if (r == EOWNERDEAD) {
    if (repair) repair(arg);
    pt_lock_consistent(m);
    return PT_OWNERDEAD;
  }
  errno = r;
  return PT_ERR;
}

int pt_lock(pthread_mutex_t *m, void (*repair)(void *), void *arg) {
  return locked(m, pthread_mutex_lock(m), repair, arg);
}

#if defined(__GLIBC__)
/* glibc's robust mutex word holds its owner's thread id (and flag bits):
   none, the lock is free or its owner died. */
static int lock_free(void *m) {
  uint32_t v = __atomic_load_n((uint32_t *)&((pthread_mutex_t *)m)->__data.__lock,
                               __ATOMIC_ACQUIRE);
  return (v & FUTEX_TID_MASK) == 0;
}
#else
static int lock_free(void *m) { (void)m; return 1; }
#endif

/* The trylocks of a lock spin, each once the word reads free (reading
   does not slow the holder down as a trylock's write does). */
typedef struct trying {
  pthread_mutex_t *m;
  int r;                        /* the last trylock's result */
} trying;

static int tried(void *a) {
  trying *t = (trying *)a;
  if (!lock_free(t->m)) return 0;
  t->r = pthread_mutex_trylock(t->m);
  return t->r != EBUSY;
}

int pt_lock_try_spin(pthread_mutex_t *m) {
  trying t;
  t.m = m;
  t.r = EBUSY;
  spin_until(tried, &t);
  return t.r;
}

/* A trylock that says EOWNERDEAD has taken the lock over: locking again
   would wait for ever on this thread's own lock. */
int pt_lock_spin(pthread_mutex_t *m, void (*repair)(void *), void *arg) {
  int r = pt_lock_try_spin(m);
  return r == EBUSY ? pt_lock(m, repair, arg) : locked(m, r, repair, arg);
}

/* The first trylock also takes it again when it is ours (recursive). */
int pt_lock_acquire_spin(pthread_mutex_t *m, int (*cancelled)(void)) {
  int r = pthread_mutex_trylock(m);
  if (r == EBUSY) r = pt_lock_try_spin(m);
  while (r == EBUSY) {
    if (cancelled && cancelled()) { errno = ECANCELED; return -1; }
    switch (pt_lock_wait(m, pt_clock_now() + SLICE, NULL, NULL, 0)) {
      case PT_OK: return 0;
      case PT_OWNERDEAD: return 1;
      case PT_TIMEOUT: break;
      default: return -1;
    }
  }
  if (r == 0 || r == EOWNERDEAD) return r == EOWNERDEAD;
  errno = r;
  return -1;
}

void pt_unlock(pthread_mutex_t *m) { pt_lock_release(m); }

/* ---- condition variables ---------------------------------------------------- */

/* sleeping == PT_COND_SPINNING: the only waiters spin on seq (they store
   1 before they sleep, then look at seq: one of the two sides sees the
   other's store), so the bump alone may do. */
void pt_cond_wake(pt_cond *c) {
  uint32_t s = __atomic_load_n(&c->sleeping, __ATOMIC_RELAXED);
  if (!s) return;
  if (s != PT_COND_SPINNING) pt_seq_bump_wake(&c->seq);
  else {
    __atomic_add_fetch(&c->seq, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->sleeping, __ATOMIC_SEQ_CST) != PT_COND_SPINNING)
      pt_futex_wake(&c->seq, -1);
  }
  __atomic_store_n(&c->sleeping, 0, __ATOMIC_RELAXED);   /* after the wake */
}

int pt_cond_wait_on(pt_cond *c, pthread_mutex_t *m, double deadline, const pt_wake *w,
                    void (*repair)(void *), void *arg) {
  const uint32_t *seq = &c->seq;
  uint32_t s;
  int r, lk;
  __atomic_store_n(&c->sleeping, 1, __ATOMIC_RELAXED);
  s = __atomic_load_n(&c->seq, __ATOMIC_RELAXED);
  pt_unlock(m);
  r = pt_futex_wait_on(&seq, &s, 1, deadline, w);
  lk = pt_lock_spin(m, repair, arg);
  if (lk == PT_ERR) abort();     /* only ENOTRECOVERABLE, which pt_lock prevents */
  return r;
}

/* A robust mutex says EPERM to an unlock by a thread that does not own it
   (POSIX requires the owner check for robust and recursive mutexes), so
   unlocking until EPERM counts the depth without glibc's private fields.
   Once the last unlock frees m another thread may own it: its unlock by us
   fails the owner check too and leaves it alone. */
static int unlock_all(pthread_mutex_t *m) {
  int n = 0;
  while (pthread_mutex_unlock(m) == 0) n++;
  return n;
}

int pt_cond_wait_all(pt_cond *c, pthread_mutex_t *m, double deadline, const pt_wake *w,
                     int *depth) {
  const uint32_t *seq = &c->seq;
  uint32_t s;
  int r;
  int spinning = spin_useful() && !__atomic_load_n(&c->sleeping, __ATOMIC_RELAXED);
  /* the change is often about to come: a spin saves the sleep and both
     sides' system calls (only spinners: the waker just bumps seq) */
  __atomic_store_n(&c->sleeping, spinning ? PT_COND_SPINNING : 1, __ATOMIC_RELAXED);
  s = __atomic_load_n(&c->seq, __ATOMIC_RELAXED);
  *depth = unlock_all(m);
  if (spinning && spin_while(&c->seq, s, 0)) r = PT_OK;
  else {
    if (spinning) __atomic_store_n(&c->sleeping, 1, __ATOMIC_SEQ_CST);   /* then seq */
    r = pt_futex_wait_on(&seq, &s, 1, deadline, w);
  }
  /* woken by a changer that still holds m: let it go by reading (a
     trylock's write would slow it down), then take m */
  spin_until(lock_free, m);
  return r;
}

void pt_cond_relock(pthread_mutex_t *m, int depth, void (*repair)(void *), void *arg) {
  if (pt_lock_spin(m, repair, arg) == PT_ERR) abort();     /* as pt_cond_wait_on */
  while (--depth > 0)
    if (pthread_mutex_lock(m) != 0) abort();   /* ours already: a count */
}

/* ---- robust locks held for long (added for pipes by the select work) -------
 * A pipe's message locks are held for a whole message, which may wait on a
 * full pipe: their waiters must stay cancellable and interruptible.  glibc's
 * robust mutex word follows the kernel's robust-futex protocol (owner tid,
 * FUTEX_WAITERS, FUTEX_OWNER_DIED): a waiter sets FUTEX_WAITERS and sleeps
 * on the word; the unlocker that sees the bit wakes one sleeper; the kernel,
 * when the owner dies, marks the word FUTEX_OWNER_DIED and wakes one too.
 * So the wait is a futex_waitv over that word, the cancel flag and the
 * interrupt word.  The lock is taken only by pthread_mutex_trylock; a waiter
 * that slept sets FUTEX_WAITERS again once it holds the lock (others may
 * sleep still), as glibc's own lock does.  A waiter that slept and then
 * leaves without the lock (timeout, cancel, Ctrl-C) may have taken the one
 * wake an unlock gave, while the bit that would wake the next sleeper is
 * gone (the lock was taken again by a trylock, which sets no bit): it
 * passes the wake on, and the sleeper it wakes looks again and sets the
 * bit itself.  A waiter SIGKILLed once woken cannot pass the wake on: the
 * other sleepers slept for ever on the free lock (table_spec).  glibc's
 * own lock has the kernel do it: while it waits, its thread's robust list
 * names the lock as the operation pending, and the kernel, seeing a thread
 * die with a lock pending whose word has no owner, wakes one sleeper of it.
 * So a sleep here names the lock pending too (robust_head), and the next
 * trylock (glibc's, which sets and clears it itself) or the give-up clears
 * it.  Not covered: the lock taken again by a trylock (no bit) before the
 * woken waiter died; the kernel wakes nobody then (nor for glibc's lock). */
#if defined(__GLIBC__)
/* This thread's robust list head (glibc's, which the kernel walks when the
   thread dies), or NULL when there is none or its futex offset is not a
   robust mutex's (then nothing is named pending).  Asked once per thread
   (one word of static TLS: NO_HEAD once asked and there is none); a forked
   child's is the same, at the same address. */
static PT_TLS struct robust_list_head *robust_head;
static struct robust_list_head no_head;
#define NO_HEAD (&no_head)

static struct robust_list_head *my_robust_head(void) {
  if (!robust_head) {
    struct robust_list_head *h = NULL;
    size_t len = 0;
    long off = (long)offsetof(pthread_mutex_t, __data.__lock) -
               (long)offsetof(pthread_mutex_t, __data.__list.__next);
    if (syscall(SYS_get_robust_list, 0, &h, &len) != 0 || len != sizeof *h || !h ||
        h->futex_offset != off)
      h = NO_HEAD;
    robust_head = h;
  }
  return robust_head == NO_HEAD ? NULL : robust_head;
}

/* Name m pending (see above), or nothing. */
static void pending_on(pthread_mutex_t *m) {
  struct robust_list_head *h = my_robust_head();
  if (h) h->list_op_pending = (struct robust_list *)(void *)&m->__data.__list.__next;
  __atomic_signal_fence(__ATOMIC_SEQ_CST);   /* named before the sleep (the kernel reads it at exit) */
}

static int lock_give_up(const uint32_t *word, int slept, int status) {
  struct robust_list_head *h = robust_head;
  if (slept && h && h != NO_HEAD) h->list_op_pending = NULL;
  if (slept) pt_futex_wake(word, 1);
  return status;
}

int pt_lock_wait(pthread_mutex_t *m, double deadline, const volatile int *cancel,
                 const uint32_t *intr, uint32_t intr_expected) {
  uint32_t *word = (uint32_t *)&m->__data.__lock;
  const uint32_t *watched = word;
  pt_wake w;
  int slept = 0;
  w.cancel = cancel;
  w.intr = intr;
  w.intr_expected = intr_expected;
  for (;;) {
    uint32_t v;
    int r = pthread_mutex_trylock(m), st;
    if (r == 0 || r == EOWNERDEAD) {
      if (slept) __atomic_fetch_or(word, FUTEX_WAITERS, __ATOMIC_RELAXED);
      if (r == 0) return PT_OK;
      pthread_mutex_consistent(m);
      return PT_OWNERDEAD;
    }
    if (r != EBUSY) { errno = r; return lock_give_up(word, slept, PT_ERR); }
    if (cancelled(cancel)) return lock_give_up(word, slept, PT_CANCELLED);
    if (deadline >= 0 && pt_clock_now() >= deadline) return lock_give_up(word, slept, PT_TIMEOUT);
    v = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    if (v == 0 || (v & FUTEX_OWNER_DIED)) continue;      /* free, or its owner died */
    if (!(v & FUTEX_WAITERS)) {
      if (!__atomic_compare_exchange_n(word, &v, v | FUTEX_WAITERS, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        continue;
      v |= FUTEX_WAITERS;
    }
    pending_on(m);                                       /* see robust_head */
    st = pt_futex_wait_on(&watched, &v, 1, deadline, &w);
    slept = 1;
    if (st == PT_OK || st == PT_TIMEOUT) continue;       /* look again (the trylock clears pending) */
    if (st == PT_INTR && !interrupt_moved(&w)) continue; /* not a Ctrl-C */
    return lock_give_up(word, slept, st);
  }
}
#else
int pt_lock_wait(pthread_mutex_t *m, double deadline, const volatile int *cancel,
                 const uint32_t *intr, uint32_t intr_expected) {
  for (;;) {                     /* no known lock word: 50 ms slices */
    struct timespec ts;
    int r = pthread_mutex_trylock(m);
    if (r == 0) return PT_OK;
    if (r == EOWNERDEAD) { pthread_mutex_consistent(m); return PT_OWNERDEAD; }
    if (r != EBUSY) { errno = r; return PT_ERR; }
    if (cancelled(cancel)) return PT_CANCELLED;
    if (intr && __atomic_load_n(intr, __ATOMIC_ACQUIRE) != intr_expected) return PT_INTR;
    if (deadline >= 0 && pt_clock_now() >= deadline) return PT_TIMEOUT;
    ts = to_timespec(step_until(deadline, SLICE));
    r = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
    if (r == 0) return PT_OK;
    if (r == EOWNERDEAD) { pthread_mutex_consistent(m); return PT_OWNERDEAD; }
    if (r != ETIMEDOUT && r != EINTR) { errno = r; return PT_ERR; }
  }
}
#endif
