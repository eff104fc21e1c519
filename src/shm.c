/* shm.c - handles: the counts this process's Lua userdata hold on arena
 * objects (plain C, no Lua).
 *
 * Each handle is on a process-local list, so that a forked worker leaving
 * through pt_child_exit (it never closes its Lua state) can drop the
 * counts its own handles hold, and a child forgets the parent's. */
#include "shm.h"

#include <pthread.h>
#include <unistd.h>

/* ---- handles ------------------------------------------------------------------ */

static pthread_mutex_t handles_mu = PTHREAD_MUTEX_INITIALIZER;
static pt_shm_handle *handles;

void pt_shm_handles_after_fork(void) {
  /* The parent's handles stay in this copy of its heap, but they hold the
     parent's counts, not ours: forget them.  A thread of the parent may
     have held the lock at the fork: only the forking thread came along,
     so it starts unlocked here. */
  pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
  handles_mu = fresh;
  handles = NULL;
}

void pt_shm_track(pt_shm_handle *h, pt_off off, uint64_t gen, int kind,
                  void (*drop)(pt_off, uint64_t)) {
  h->magic = PT_HANDLE_MAGIC;
  h->gen = gen;
  __atomic_store_n(&h->off, off, __ATOMIC_RELAXED);
  h->pid = getpid();
  h->kind = kind;
  h->drop = drop;
  h->prev = NULL;
  pthread_mutex_lock(&handles_mu);
  h->next = handles;
  if (handles) handles->prev = h;
  handles = h;
  pthread_mutex_unlock(&handles_mu);
}

/* Taking the offset is one atomic exchange: of a release racing with
   pt_shm_handles_exit_child, only one drops the count. */
void pt_shm_release(pt_shm_handle *h) {
  pt_off off = __atomic_exchange_n(&h->off, 0, __ATOMIC_ACQ_REL);
  if (!off) return;
  if (h->pid != getpid()) return;            /* inherited through fork */
  pthread_mutex_lock(&handles_mu);
  if (h->prev) h->prev->next = h->next;
  else if (handles == h) handles = h->next;
  if (h->next) h->next->prev = h->prev;
  h->prev = h->next = NULL;
  pthread_mutex_unlock(&handles_mu);
  h->drop(off, h->gen);
}

/* A forked worker leaving through pt_child_exit drops the counts its own
   handles hold (it never closes its Lua state). */
void pt_shm_handles_exit_child(void) {
  pt_shm_handle *h, *next;
  pid_t me = getpid();
  /* the whole walk under the lock: a thread releasing one of these at the
     same time waits, then finds it off the list */
  pthread_mutex_lock(&handles_mu);
  h = handles;
  handles = NULL;
  for (; h; h = next) {
    pt_off off;
    next = h->next;
    h->prev = h->next = NULL;
    if (h->pid != me) continue;
    off = __atomic_exchange_n(&h->off, 0, __ATOMIC_ACQ_REL);
    if (off) h->drop(off, h->gen);
  }
  pthread_mutex_unlock(&handles_mu);
}
