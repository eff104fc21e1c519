/* wait.h - the lock-and-wait module: one monotonic clock, futex waits on
 * shared memory, robust process-shared locks.  Plain C: no Lua header.
 *
 * Everything that blocks in procthread on shared memory (channels,
 * semaphores, events, barriers, pt.wait; later pt.select) blocks here,
 * on a 32-bit "sequence word" in the arena that every state change bumps:
 *
 *   waiter:  s = load(word); if (condition holds) return; wait(word, s)
 *   changer: change state; store/increment(word); wake(word)
 *
 * The kernel sleeps only while the word still holds s, so a change made
 * between the check and the sleep is never missed.  A waiter killed while
 * it sleeps leaves nothing behind: the kernel drops its queue entry.
 *
 * A thread worker's wait is a cancellation point: the canceller sets the
 * worker's cancel flag (a private int), then signals the thread.  The wait
 * watches that flag as a second futex word (futex_waitv), so a cancel that
 * lands between the caller's check and the sleep still ends the sleep (the
 * kernel sees flag != 0, or the signal interrupts it).  */
#ifndef PT_WAIT_H
#define PT_WAIT_H

#include <pthread.h>
#include <stdint.h>

#include "lock.h"

/* The status vocabulary of waits and locks. */
#define PT_OK 0            /* woken, or the word had changed already */
#define PT_TIMEOUT 1       /* the deadline passed */
#define PT_CANCELLED 2     /* this thread's cancel flag is set */
#define PT_CLOSED 3        /* (channels) closed */
#define PT_INTR 4          /* a signal arrived: check for Ctrl-C, retry */
#define PT_OWNERDEAD 5     /* a lock was taken over from a dead owner */
#define PT_ERR (-1)        /* an OS failure: errno says which */

/* ---- the clock: one for every timeout ------------------------------------ */

/* CLOCK_MONOTONIC in seconds. */
double pt_clock_now(void);
/* The deadline `timeout` seconds from now.  A negative timeout, infinity
   (math.huge) or one beyond a century means forever: PT_FOREVER. */
#define PT_FOREVER (-1.0)
double pt_deadline(double timeout);

/* ---- futex waits ------------------------------------------------------- */

/* Sleep while *word == expected (word in MAP_SHARED memory, so waits and
   wakes work across processes), until woken, the deadline passes, *cancel
   (may be NULL) becomes nonzero, or a signal arrives.  Returns PT_OK (the
   caller re-checks its condition: wake-ups may be spurious), PT_TIMEOUT,
   PT_CANCELLED, PT_INTR or PT_ERR.  Uses no CPU while it sleeps. */
int pt_futex_wait(const uint32_t *word, uint32_t expected, double deadline,
                  const volatile int *cancel);

/* Several words at once (pt.select): sleep while every words[i] equals
   expected[i]; at most PT_FUTEX_MAXV.  *which is set to the index of the
   word that woken the caller, or -1 when unknown. */
#define PT_FUTEX_MAXV 64
int pt_futex_waitv(const uint32_t *const *words, const uint32_t *expected,
                   int n, double deadline, const volatile int *cancel,
                   int *which);

/* ---- what ends a wait besides its words ---------------------------------
   The calling thread's cancel flag (NULL: none), and the interrupt word
   (lifecycle's pt_interrupt_word; NULL: none) once it no longer holds
   intr_expected.  The kernel watches both with the wait's own words, so a
   cancel or a Ctrl-C that comes after the caller looked still ends the
   sleep. */
typedef struct pt_wake {
  const volatile int *cancel;
  const uint32_t *intr;
  uint32_t intr_expected;
} pt_wake;

/* pt_futex_waitv over words[0..n-1] (n < PT_FUTEX_MAXV) and what w names
   (NULL: nothing more).  PT_INTR also when w's interrupt word moved (a
   Ctrl-C): every futex sleep that watches one goes through here. */
int pt_futex_wait_on(const uint32_t *const *words, const uint32_t *expected, int n,
                     double deadline, const pt_wake *w);

/* Wake up to n sleepers of word (n < 0: all). */
void pt_futex_wake(const uint32_t *word, int n);

/* Increment a sequence word and wake all its sleepers. */
void pt_seq_bump_wake(uint32_t *word);

/* The spin before a sleep, for every wait that has one: spin (at most 10
   microseconds by the clock, pausing the CPU) until ready(arg) says 1:
   returns 1 then, 0 when the spin gives up.  ready is asked first, once
   even when the process may use only one CPU (pt_spin_useful() == 0),
   where there is no spin at all: the side it waits for cannot run
   meanwhile.  When the change is about to come, this saves the sleep and
   the wake (both sides' system calls). */
int pt_spin_until(int (*ready)(void *arg), void *arg);
/* pt_spin_until for "the 64-bit *word no longer holds v". */
int pt_spin_while(const uint64_t *word, uint64_t v);
int pt_spin_useful(void);
/* The spin of a reader that waits for another side's system call (a pipe
   write): ready(arg) is asked first; then, not on one CPU, the CPU is
   yielded and ready asked again, until it says 1 (returns 1) or `seconds`
   have passed, or the deadline (PT_FOREVER: none) (returns 0).  Yielding,
   not pausing: a partner that waits for this very CPU runs at once. */
int pt_yield_until(int (*ready)(void *arg), void *arg, double seconds, double deadline);
/* One pause of a spin loop (the CPU's pause/yield hint). */
void pt_cpu_relax(void);

/* ---- robust process-shared locks --------------------------------------- */

/* Robust process-shared mutexes are lock.h's (pt_lock_init(m, 0)); these
   take them with the repair of a dead owner's state. */
/* Lock m.  When its previous owner died holding it, repair(arg) runs
   first (it must bring the guarded data back to a consistent state; may
   be NULL) and the lock is marked consistent.  Returns PT_OK,
   PT_OWNERDEAD (taken over and repaired), or PT_ERR (errno).  Use only
   for locks held for short, bounded sections: it never waits for long. */
int pt_lock(pthread_mutex_t *m, void (*repair)(void *), void *arg);
/* The same, trying for a while (a few microseconds; not on one CPU) before
   it sleeps: for a waiter just woken while its waker still holds the lock. */
int pt_lock_spin(pthread_mutex_t *m, void (*repair)(void *), void *arg);
/* pt_lock_spin's spin, for every lock that spins before it sleeps (the
   shared tables' too): spin (pt_spin_until) until a trylock of m, tried
   each time m's word reads free, says other than EBUSY.  A word that
   reads taken may be this thread's own: call it on a recursive m only
   after a trylock said EBUSY.  Returns that trylock's result (0, or
   EOWNERDEAD: taken over, the caller repairs and marks it consistent;
   another errno: a failure), or EBUSY when the spin gave up. */
int pt_lock_try_spin(pthread_mutex_t *m);
/* For plain-C users of a lock held for long (htab.h's pt_ht_lock), in
   lock.h's status vocabulary (0 locked, 1 taken over from a dead owner:
   the caller repairs and marks it consistent, -1 errno): the spin, then
   pt_lock_wait in slices of 50 ms, asking cancelled() (may be NULL) after
   each; when it says 1, -1 with errno ECANCELED. */
int pt_lock_acquire_spin(pthread_mutex_t *m, int (*cancelled)(void));
void pt_unlock(pthread_mutex_t *m);

/* ---- condition variables on shared memory ------------------------------
 * A robust condition variable: a sequence word and a "someone sleeps" flag,
 * both guarded by the object's robust lock.  The rule that makes it crash
 * safe: a changer wakes the sleepers while it holds the lock and BEFORE its
 * publishing store.  A woken sleeper then passes through the lock, so it
 * either sees the change or, if the changer died first, takes the lock over
 * (EOWNERDEAD) and sees the state as it was: nobody sleeps on a change that
 * happened without a wake.  A sleeper killed while it sleeps leaves the
 * flag set, which costs the next changer one needless wake, nothing more. */
typedef struct pt_cond {
  uint32_t seq;                 /* futex word: bumped by each wake */
  uint32_t sleeping;            /* 1: someone may sleep on seq;
                                   PT_COND_SPINNING: only spin on it */
} pt_cond;
#define PT_COND_SPINNING 2u

/* Holding m: wake every sleeper of c (before publishing the change). */
void pt_cond_wake(pt_cond *c);
/* Holding m: release m, sleep until woken, the deadline passes, or what w
   names (NULL: nothing) ends it, take m again (repair as pt_lock; m is
   always held on return) and return pt_futex_wait_on's status.  The
   caller re-checks its condition on PT_OK (wake-ups may be spurious). */
int pt_cond_wait_on(pt_cond *c, pthread_mutex_t *m, double deadline, const pt_wake *w,
                    void (*repair)(void *), void *arg);

/* pt_cond_wait_on for a recursive lock m that this thread holds any number of
   times (pt.wait inside nested pt.locked): m is released entirely (*depth:
   how many times it was held) while it sleeps, and NOT held on return: the
   caller takes it back, by pt_cond_relock or by a wait of its own that
   may give up (when *depth is 1, nobody else relies on it).  Before the
   sleep it spins (pt_spin_until) on c's word, marked PT_COND_SPINNING so
   that the waker only bumps it.  Ended by what w names too (NULL:
   nothing).  Returns pt_futex_wait_on's status; PT_INTR: a signal or the
   interrupt word moved (ask the lifecycle).  The caller re-checks its
   condition on PT_OK. */
int pt_cond_wait_all(pt_cond *c, pthread_mutex_t *m, double deadline, const pt_wake *w,
                     int *depth);
/* Take m back depth times, whatever comes (as pthread_cond_wait does after
   a cancel); repair as pt_lock. */
void pt_cond_relock(pthread_mutex_t *m, int depth, void (*repair)(void *), void *arg);

/* ---- robust locks held for long (pipes; see wait.c) ----------------------
   Take m (a robust mutex of pt_lock_init or the like) until the deadline,
   staying a cancellation point (cancel) and, when intr is given (lifecycle's
   pt_interrupt_word), interruptible: no timer.  PT_OK, PT_OWNERDEAD (taken
   over; the caller repairs), PT_TIMEOUT, PT_CANCELLED, PT_INTR (the
   interrupt word moved), PT_ERR. */
int pt_lock_wait(pthread_mutex_t *m, double deadline, const volatile int *cancel,
                 const uint32_t *intr, uint32_t intr_expected);

#endif
