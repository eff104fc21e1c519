/* shm.c - handles: the counts this process's Lua userdata hold on arena
 * objects (plain C, no Lua).
 *
 * Each handle is on a process-local list (one for all the Lua states of
 * the process: the main one and every thread worker's), so that a forked
 * worker leaving through pt_child_exit (it never closes its Lua state) can
 * drop the counts its handles hold, and so that a fork (pt_shm_fork) can
 * take counts on every object an inherited handle names, held by the
 * parent for the child until it is reaped.  A handle's pid is the process
 * whose count it holds.  Also the repair that robust locks over
 * one-store data share (pt_shm_recovered). */
#include "shm.h"
#include "htab.h"
#include "obj.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- handles ------------------------------------------------------------------ */

static pthread_mutex_t handles_mu = PTHREAD_MUTEX_INITIALIZER;
static pt_shm_handle *handles;
static pid_t handles_pid;        /* the process the list belongs to; mu */

/* ---- taking a count for a child --------------------------------------------------- */

static int table_take(pt_off off, uint64_t gen) {
  if (!pt_ht_live(off, gen)) return 0;
  pt_ht_incref(off);
  return 1;
}

/* By kind: tables are built in (htab.c is plain C as this file is),
   arrays register theirs; every other kind is an arena object of obj.h. */
static int (*takes[PT_NKINDS])(pt_off, uint64_t) = {NULL, table_take, NULL};

void pt_shm_set_take(int kind, int (*take)(pt_off, uint64_t)) {
  __atomic_store_n(&takes[kind], take, __ATOMIC_RELEASE);
}

/* 1: a count was taken (the object lives) */
static int take_count(const pt_shm_handle *h, pt_off off) {
  int (*take)(pt_off, uint64_t) =
    h->kind < PT_NKINDS ? __atomic_load_n(&takes[h->kind], __ATOMIC_ACQUIRE) : pt_obj_take;
  return take ? take(off, h->gen) : 0;
}

/* getpid() is a system call each time: fork.c keeps it (pt_pid, right
   across every fork).  Weak: the plain-C test (test/arena_test.c) links
   this file without fork.c, and asks the system. */
extern pid_t pt_pid(void) __attribute__((weak));
static pid_t my_pid(void) { return pt_pid ? pt_pid() : getpid(); }

/* Holding the lock, in the process the list belongs to: a list of another
   one (this process was forked by other means than pt_shm_fork) names
   handles that hold none of our counts: forget it. */
static void own_list(void) {
  pid_t me = my_pid();
  if (handles_pid == me) return;
  handles_pid = me;
  handles = NULL;
}

void pt_shm_track(pt_shm_handle *h, pt_off off, uint64_t gen, int kind,
                  void (*drop)(pt_off, uint64_t)) {
  h->gen = gen;
  h->pid = my_pid();
  h->kind = kind;
  h->drop = drop;
  h->prev = NULL;
  pthread_mutex_lock(&handles_mu);
  own_list();
  __atomic_store_n(&h->off, off, __ATOMIC_RELAXED);
  h->next = handles;
  if (handles) handles->prev = h;
  handles = h;
  pthread_mutex_unlock(&handles_mu);
}

/* Taking the offset is one atomic exchange, under the lock: a handle is
   on the list with an offset exactly while it holds a count, whatever
   pt_shm_fork and pt_shm_handles_exit_child meet. */
void pt_shm_release(pt_shm_handle *h) {
  pt_off off;
  if (h->pid != my_pid()) {      /* a copy made by a fork not of ours: no count */
    __atomic_store_n(&h->off, 0, __ATOMIC_RELAXED);
    return;
  }
  pthread_mutex_lock(&handles_mu);
  off = __atomic_exchange_n(&h->off, 0, __ATOMIC_ACQ_REL);
  if (off) {
    if (h->prev) h->prev->next = h->next;
    else if (handles == h) handles = h->next;
    if (h->next) h->next->prev = h->prev;
    h->prev = h->next = NULL;
  }
  pthread_mutex_unlock(&handles_mu);
  if (off) h->drop(off, h->gen);
}

/* Fork.  Before it, under the lock (no handle comes or goes meanwhile),
   the parent takes one count for the child on the object of every live
   handle, and keeps them in `held`: they exist before the parent could
   drop its own, and they are the parent's to give back once the child has
   ended (pt_shm_counts_drop, when it is reaped), however it ended: a child
   killed by a signal leaks none of them.  The child's inherited handles
   hold no count of their own (their pid stays the parent's): the child
   never drops one.  A failed fork gives them back at once. */
__attribute__((hot)) pid_t pt_shm_fork(pt_shm_counts *held) {   /* PT_AFTER_FORK (pt.h) */
  pt_shm_handle *h;
  pid_t pid;
  size_t n = 0;
  int e;
  held->n = 0;
  held->v = NULL;
  pthread_mutex_lock(&handles_mu);
  own_list();
  for (h = handles; h; h = h->next) n++;
  if (n && !(held->v = malloc(n * sizeof *held->v))) {
    pthread_mutex_unlock(&handles_mu);
    errno = ENOMEM;
    return -1;
  }
  for (h = handles; h; h = h->next) {
    pt_off off = pt_shm_handle_off(h);
    if (off && take_count(h, off)) {
      held->v[held->n].off = off;
      held->v[held->n].gen = h->gen;
      held->v[held->n].drop = h->drop;
      held->n++;
    }
  }
  pid = fork();
  if (pid == 0) {
    /* the child's path calls no code it need not (each 64 KiB window of
       libc's code it runs first is a page fault: PT_AFTER_FORK, pt.h),
       errno's included */
    if (held->v) free(held->v);  /* the parent's record, not ours */
    held->v = NULL;
    held->n = 0;
    handles_pid = my_pid();      /* set by the fork's child handler (fork.c): no system call */
    if (handles) handles = NULL; /* the inherited ones hold the parent's counts */
    pt_mutex_reset(&handles_mu); /* held across the fork by this very thread */
    return 0;
  }
  pthread_mutex_unlock(&handles_mu);
  if (pid < 0) {                 /* errno written only then: its page is the thread's,
                                    a copy-on-write fault while the child runs */
    e = errno;
    pt_shm_counts_drop(held);
    errno = e;
  }
  return pid;
}

void pt_shm_counts_drop(pt_shm_counts *held) {
  size_t i;
  for (i = 0; i < held->n; i++) held->v[i].drop(held->v[i].off, held->v[i].gen);
  free(held->v);
  held->v = NULL;
  held->n = 0;
}

__attribute__((hot)) void pt_shm_handles_exit_child(void) {   /* PT_AFTER_FORK (pt.h) */
  pt_shm_handle *h, *next;
  pid_t me = my_pid();
  /* none made in this child (the inherited ones were forgotten at the
     fork): nothing to drop, and no lock taken -- libc's mutex code is a
     page fault away in a new child (PT_AFTER_FORK).  No thread worker
     runs here (pt_child_exit), and no helper thread makes handles. */
  if (__atomic_load_n(&handles, __ATOMIC_ACQUIRE) == NULL) return;
  /* the whole walk under the lock: a thread releasing one of these at the
     same time waits, then finds it off the list */
  pthread_mutex_lock(&handles_mu);
  own_list();
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

/* ---- robust locks ------------------------------------------------------------- */

void pt_shm_recovered(void *unused) {
  (void)unused;
  pt_shm_note_recovery();
}
