/* lock.c - robust, process-shared mutexes (plain C, no Lua); see lock.h. */
#include "lock.h"

#include <errno.h>
#include <time.h>

int pt_lock_init(pthread_mutex_t *m, int recursive) {
  pthread_mutexattr_t a;
  int r;
  if ((r = pthread_mutexattr_init(&a)) != 0) { errno = r; return -1; }
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  if (recursive) pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
  r = pthread_mutex_init(m, &a);
  pthread_mutexattr_destroy(&a);
  if (r) { errno = r; return -1; }
  return 0;
}

/* A pthread result as a status (see lock.h). */
static int lock_status(int r) {
  if (r == 0) return 0;
  if (r == EOWNERDEAD) return 1;
  if (r == ETIMEDOUT) return 2;
  errno = r;
  return -1;
}

int pt_lock_acquire(pthread_mutex_t *m) { return lock_status(pthread_mutex_lock(m)); }

/* Spin briefly before sleeping: the sections these locks guard last tens of
   nanoseconds, far less than a futex sleep and wake. */
int pt_lock_acquire_spin(pthread_mutex_t *m, int (*cancelled)(void)) {
  int i, r;
  for (i = 0; i < 200; i++) {
    r = pthread_mutex_trylock(m);           /* also takes it again when ours */
    if (r == 0) return 0;
    if (r == EOWNERDEAD) return 1;
    if (r != EBUSY) break;
#ifdef __GLIBC__
    /* wait for the lock word to clear by reading, not by writing */
    while (i < 200 && __atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED) != 0) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      i++;
    }
#elif defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  /* Held for long (pt.locked): sleep on it, waking to honour cancellation. */
  for (;;) {
    r = pt_lock_acquire_timed(m, 0.05);
    if (r != 2) return r;
    if (cancelled && cancelled()) {
      errno = ECANCELED;
      return -1;
    }
  }
}

/* CLOCK_REALTIME: what pthread_mutex_timedlock measures against. */
int pt_lock_acquire_timed(pthread_mutex_t *m, double timeout) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += (time_t)timeout;
  ts.tv_nsec += (long)((timeout - (double)(time_t)timeout) * 1e9);
  if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
  return lock_status(pthread_mutex_timedlock(m, &ts));
}

void pt_lock_consistent(pthread_mutex_t *m) { pthread_mutex_consistent(m); }
void pt_lock_release(pthread_mutex_t *m) { pthread_mutex_unlock(m); }
