/* lock.h - robust, process-shared mutexes (plain C, no Lua).
 *
 * The locks live in the shared arena and guard data other processes reach:
 * a process killed while holding one leaves it to the next locker, who is
 * told so (status 1), repairs what the lock guards and calls
 * pt_lock_consistent.  Status of every taking function: 0 locked; 1 locked,
 * but the previous owner died holding it; -1 failure, errno. */
#ifndef PT_LOCK_H
#define PT_LOCK_H

#include <pthread.h>

int pt_lock_init(pthread_mutex_t *m, int recursive);   /* 0, or -1 errno */
int pt_lock_acquire(pthread_mutex_t *m);
/* (Waiting for a lock that is held for long: wait.h, pt_lock_acquire_spin
   with this status vocabulary, pt_lock_wait with its own.) */
void pt_lock_consistent(pthread_mutex_t *m);
void pt_lock_release(pthread_mutex_t *m);

/* In a new child: a mutex made as new -- one the forking thread held
   across the fork (its unlock), or one another thread of the parent may
   have held (its re-init).  Stores of the initializer, inlined: libc's
   pthread_mutex_unlock and _init are code a child would fault in for
   this alone (PT_AFTER_FORK).  The child has this one thread, so no
   waiter needs waking. */
static inline void pt_mutex_reset(pthread_mutex_t *m) {
  pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
  *m = fresh;
}

#endif
