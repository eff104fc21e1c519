/* lock.c - robust, process-shared mutexes (plain C, no Lua); see lock.h. */
#include "lock.h"

#include <errno.h>

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
  errno = r;
  return -1;
}

int pt_lock_acquire(pthread_mutex_t *m) { return lock_status(pthread_mutex_lock(m)); }

void pt_lock_consistent(pthread_mutex_t *m) { pthread_mutex_consistent(m); }
void pt_lock_release(pthread_mutex_t *m) { pthread_mutex_unlock(m); }
