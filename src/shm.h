/* shm.h - the shared arena, shared by shm.c, table.c and array.c.
 *
 * One MAP_SHARED|MAP_ANONYMOUS mapping per process tree, mapped before the
 * first fork procthread does.  Everything inside refers to everything else
 * by offset from the arena's base (pt_off), never by pointer; offset 0 is
 * "none".  The allocator keeps an undo log so that a process killed in the
 * middle of an allocation leaves it as it was before (see shm.c).  */
#ifndef PT_SHM_H
#define PT_SHM_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef uint64_t pt_off;

extern char *pt_shm_base;                 /* NULL until mapped */
/* The base, published once with a release store: read it atomically (a
   plain read racing with that store is a data race under C11).  Acquire
   where the caller has not synchronised with the mapping yet. */
static inline char *pt_shm_mapped(void) {
  return __atomic_load_n(&pt_shm_base, __ATOMIC_ACQUIRE);
}
#define PT_SHM_PTR(T, off) \
  ((T *)(void *)(__atomic_load_n(&pt_shm_base, __ATOMIC_RELAXED) + (off)))

/* Last reason pt_shm_ensure failed in this thread (for error messages). */
const char *pt_shm_errmsg(void);

/* Allocate n bytes (16-byte aligned, contents undefined).  0 when the arena
   is full.  Thread- and process-safe; never calls Lua. */
pt_off pt_shm_alloc(size_t n);
void pt_shm_free(pt_off off);
/* Allocate n bytes at a multiple of align (a power of two, 16..4096);
   free with pt_shm_free_aligned. */
pt_off pt_shm_alloc_aligned(size_t n, size_t align);
void pt_shm_free_aligned(pt_off off);
/* Usable bytes of a block returned by pt_shm_alloc. */
size_t pt_shm_usable(pt_off off);

typedef struct pt_shm_stat {
  uint64_t size, used, peak, objects, recoveries, alloc_recoveries;
  int mapped;
} pt_shm_stat;
void pt_shm_getstats(pt_shm_stat *st);
/* Bump the recovery counter (a lock was taken over from a dead owner). */
void pt_shm_note_recovery(void);

/* Check the allocator's structures: NULL when sound, else what is wrong. */
const char *pt_shm_check(void);

/* Size of the arena to map: set before mapping (0 ok, -1 already mapped). */
int pt_shm_set_size(uint64_t bytes);
uint64_t pt_shm_config_size(void);
/* "256M", "1G", "65536", "64k" into *bytes: 0 ok, -1 not a size, -2 more
   than 64 bits can count (whether the size is usable: pt_shm_size_problem). */
int pt_shm_parse_size(const char *s, uint64_t *bytes);
/* What is wrong with an arena of `bytes` (NULL: fine), into out. */
const char *pt_shm_size_problem(uint64_t bytes, char *out, size_t n);
#define PT_SHM_MIN_SIZE ((uint64_t)1 << 20)
#define PT_SHM_DEFAULT_SIZE ((uint64_t)1 << 30)
/* 64 TiB: half of x86-64's 47-bit user address space, and what an arena
   offset with its flag bits can name. */
#define PT_SHM_MAX_SIZE ((uint64_t)1 << 46)
/* "1 GiB", "1536 KiB", "12345 bytes" */
void pt_shm_format_size(char *out, size_t n, uint64_t bytes);

/* The message for the last allocation of this thread that failed: the
   arena's size and how to raise it, or, when enough bytes are free but no
   block is large enough, that the space is fragmented. */
const char *pt_shm_full_msg(void);

/* Generations: every arena object (table, shared array) takes a new one
   when made and stores it in its header (published with a release store);
   destroying it stores 0 first.  A handle keeps the generation it adopted:
   a header that no longer holds it is an object freed under the handle
   (the memory may be reused), which the handle must never touch. */
uint64_t pt_shm_new_gen(void);
static inline int pt_shm_gen_ok(const uint64_t *genp, uint64_t gen) {
  return gen != 0 && __atomic_load_n(genp, __ATOMIC_ACQUIRE) == gen;
}
static inline void pt_shm_gen_publish(uint64_t *genp, uint64_t gen) {
  __atomic_store_n(genp, gen, __ATOMIC_RELEASE);
}
static inline void pt_shm_gen_kill(uint64_t *genp) {
  __atomic_store_n(genp, 0, __ATOMIC_RELEASE);
}

/* Robust, process-shared mutexes living in the arena. */
int pt_shm_mutex_init(pthread_mutex_t *m, int recursive);
/* 0: locked.  1: locked, but the previous owner died holding it: repair the
   data it guards, then call pt_shm_mutex_consistent.  -1: failure, errno. */
int pt_shm_mutex_lock(pthread_mutex_t *m);
/* Same, spinning a little on a busy lock before sleeping; a thread whose
   cancellation is asked gives up waiting: -1 with errno ECANCELED. */
int pt_shm_mutex_trylock_spin(pthread_mutex_t *m);
/* Same, giving up after `timeout` seconds: returns 2 then. */
int pt_shm_mutex_timedlock(pthread_mutex_t *m, double timeout);
void pt_shm_mutex_consistent(pthread_mutex_t *m);
void pt_shm_mutex_unlock(pthread_mutex_t *m);

/* Handles: the part of a Lua userdata that holds one count on an arena
   object.  Every live handle created by this process is on a process-local
   list so that a forked worker can drop its counts before _exit.  A handle
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

/* Register the fork handler that forgets the parent's handles. */
void pt_shm_init_process(void);
void pt_shm_track(pt_shm_handle *h, pt_off off, uint64_t gen, int kind,
                  void (*drop)(pt_off, uint64_t));
/* The handle's offset, 0 once released (an atomic read). */
static inline pt_off pt_shm_handle_off(const pt_shm_handle *h) {
  return __atomic_load_n(&h->off, __ATOMIC_RELAXED);
}
/* Drop the count held by h (if this process took it) and untrack it. */
void pt_shm_release(pt_shm_handle *h);

/* array.c: release the array handle at idx (1), or return 0 when it is
   not an array. */
struct lua_State;
int pt_array_release(struct lua_State *L, int idx);
/* array.c, for pt._shm_release (internal): drop one count on the shared
   array at idx, leaving its handle as it is; 0 when it is no shared array. */
int pt_array_drop_count(struct lua_State *L, int idx);

/* Atomic reference counts on arena objects. */
static inline void pt_shm_incref(uint64_t *rc) {
  __atomic_add_fetch(rc, 1, __ATOMIC_RELAXED);
}
/* Returns 1 when the count reached zero (the caller frees). */
static inline int pt_shm_decref(uint64_t *rc) {
  return __atomic_sub_fetch(rc, 1, __ATOMIC_ACQ_REL) == 0;
}

#endif
