/* lock.h - robust, process-shared mutexes (plain C, no Lua).
 *
 * The locks live in the shared arena and guard data other processes reach:
 * a process killed while holding one leaves it to the next locker, who is
 * told so (status 1), repairs what the lock guards and calls
 * pt_lock_consistent.  Status of every taking function: 0 locked; 1 locked,
 * but the previous owner died holding it; 2 timed out; -1 failure, errno. */
#ifndef PT_LOCK_H
#define PT_LOCK_H

#include <pthread.h>

int pt_lock_init(pthread_mutex_t *m, int recursive);   /* 0, or -1 errno */
int pt_lock_acquire(pthread_mutex_t *m);
/* Spin a little on a busy lock before sleeping on it.  While asleep it
   wakes now and then to ask cancelled() (may be NULL): when that says 1 it
   gives up, -1 with errno ECANCELED. */
int pt_lock_acquire_spin(pthread_mutex_t *m, int (*cancelled)(void));
/* Give up after `timeout` seconds: 2 then. */
int pt_lock_acquire_timed(pthread_mutex_t *m, double timeout);
void pt_lock_consistent(pthread_mutex_t *m);
void pt_lock_release(pthread_mutex_t *m);

#endif
