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
enum { PT_KIND_TABLE = 1, PT_KIND_ARRAY = 2, PT_NKINDS = 3 };

/* Every live handle created by this process is on a process-local list so
   that a forked worker can drop its counts before _exit.  A handle
   inherited through fork (pid differs) never drops a count. */
#define PT_HANDLE_MAGIC 0x70746861ULL   /* "ptha" */
typedef struct pt_shm_handle {
  uint64_t magic;
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
/* In a new child right after fork: forget the parent's handles. */
void pt_shm_handles_after_fork(void);
/* A forked worker leaving: drop the counts its own handles hold. */
void pt_shm_handles_exit_child(void);

#endif
