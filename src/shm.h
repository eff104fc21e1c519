/* shm.h - what the shared-memory files share: the arena (arena.h), its
 * robust locks (lock.h), and handles: the part of a Lua userdata that
 * holds one count on an arena object (shm.c, plain C).  The Lua side of
 * the arena is arena_lua.h. */
#ifndef PT_SHM_H
#define PT_SHM_H

#include <stdint.h>
#include <sys/types.h>

#include "arena.h"
#include "lock.h"

/* The kinds of arena object a handle may hold. */
enum { PT_KIND_TABLE = 1, PT_KIND_ARRAY = 2, PT_KIND_OBJ = 3, PT_NKINDS = 4 };
/* (PT_KIND_OBJ: the handles of obj.h's objects, as pt._shm_release sees
   them; those handles are tracked with their class's kind, 0x10 on.) */

/* Every live handle of this process is on a process-local list so that a
   forked worker can drop its counts before _exit, and a fork can take the
   child's own (pt_shm_fork).  pid: the process whose count the handle
   holds; a copy made by a fork other than pt_shm_fork never drops one. */
typedef struct pt_shm_handle {
  pt_off off;                          /* 0: released (atomic) */
  uint64_t gen;                        /* the object's generation */
  pid_t pid;                           /* the process that took the count */
  int kind;
  void (*drop)(pt_off off, uint64_t gen);  /* drops one count, if gen holds */
  struct pt_shm_handle *prev, *next;
} pt_shm_handle;

void pt_shm_track(pt_shm_handle *h, pt_off off, uint64_t gen, int kind,
                  void (*drop)(pt_off, uint64_t));
/* The handle's offset, 0 once released (an atomic read). */
static inline pt_off pt_shm_handle_off(const pt_shm_handle *h) {
  return __atomic_load_n(&h->off, __ATOMIC_RELAXED);
}
/* Drop the count held by h (if this process took it) and untrack it. */
void pt_shm_release(pt_shm_handle *h);
/* Counts a parent holds for a child (see pt_shm_fork). */
typedef struct pt_shm_counts {
  size_t n;
  struct { pt_off off; uint64_t gen; void (*drop)(pt_off, uint64_t); } *v;
} pt_shm_counts;
/* fork(2), with counts: before it, one count is taken on the object of
   every live handle of this process (all its Lua states'), held for the
   child in *held, so that what the child inherited outlives the parent's
   own handles; the parent gives them back with pt_shm_counts_drop once the
   child has ended, whatever ended it.  The child's inherited handles hold
   no count (it never drops one).  A failed fork gives them back.  Returns
   what fork returns, errno kept (ENOMEM: no fork was tried). */
pid_t pt_shm_fork(pt_shm_counts *held);
void pt_shm_counts_drop(pt_shm_counts *held);
/* How a kind of handle (below PT_NKINDS) takes one more count on its
   object for pt_shm_fork, only while gen holds (1 taken, 0 freed).
   Tables' is built in; any kind from PT_NKINDS on is an obj.h object. */
void pt_shm_set_take(int kind, int (*take)(pt_off off, uint64_t gen));
/* A forked worker leaving: drop the counts its handles hold. */
void pt_shm_handles_exit_child(void);

/* The repair (wait.h's pt_lock and the like) of a robust lock over data
   that every change moves with one store, so that an owner killed at any
   instant leaves nothing half done: it only counts the recovery
   (pt.shm_stats().recoveries).  The argument is unused. */
void pt_shm_recovered(void *unused);

#endif
