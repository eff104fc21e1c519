/* arena.h - the shared arena (plain C, no Lua): mapping, allocator,
 * statistics.
 *
 * One MAP_SHARED|MAP_ANONYMOUS mapping per process tree, mapped before the
 * first fork procthread does.  Everything inside refers to everything else
 * by offset from the arena's base (pt_off), never by pointer; offset 0 is
 * "none".  The allocator keeps an undo log so that a process killed in the
 * middle of an allocation leaves it as it was before (see arena.c).  */
#ifndef PT_ARENA_H
#define PT_ARENA_H

#include <stddef.h>
#include <stdint.h>

/* Thread-local data, initial-exec: allocated with the thread by
   pthread_create (a thread that cannot get it is a pthread_create error),
   where dynamic TLS is malloc'd at a new thread's first access and glibc
   aborts the process when that fails (ulimit -v).  A dlopen'ed module has
   little static TLS (glibc's surplus, some hundreds of bytes): keep it to
   a few words (arena.c's messages are malloc'd).  Also in pt.h. */
#ifndef PT_TLS
#define PT_TLS __thread __attribute__((tls_model("initial-exec")))
#endif

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

/* Map the arena if it is not mapped yet.  0 ok, -1 with errno. */
int pt_shm_ensure(void);
/* In a new child right after fork (before anything else runs there). */
void pt_shm_after_fork_child(void);
/* Last reason pt_shm_ensure failed in this thread (for error messages). */
const char *pt_shm_errmsg(void);

/* Allocate n bytes (16-byte aligned, contents undefined).  0 when the arena
   is full.  Thread- and process-safe. */
pt_off pt_shm_alloc(size_t n);
void pt_shm_free(pt_off off);
/* Allocate n bytes at a multiple of align (a power of two, 16..4096);
   free with pt_shm_free_aligned. */
pt_off pt_shm_alloc_aligned(size_t n, size_t align);
void pt_shm_free_aligned(pt_off off);
/* Usable bytes of a block returned by pt_shm_alloc. */
size_t pt_shm_usable(pt_off off);
/* Is off where an object of `size` bytes allocated in the mapped arena may
   begin (a check of a reference read from a message, not a proof)? */
int pt_shm_plausible(pt_off off, size_t size);

/* The message for the last allocation of this thread that failed: the
   arena's size and how to raise it, or, when enough bytes are free but no
   block is large enough, that the space is fragmented. */
const char *pt_shm_full_msg(void);

/* ---- statistics ---------------------------------------------------------- */
typedef struct pt_shm_stat {
  uint64_t size, used, peak, objects, recoveries, alloc_recoveries;
  int mapped;
} pt_shm_stat;
void pt_shm_getstats(pt_shm_stat *st);
/* Bump the recovery counter (a lock was taken over from a dead owner). */
void pt_shm_note_recovery(void);
/* Check the allocator's structures: NULL when sound, else what is wrong. */
const char *pt_shm_check(void);

/* ---- configuration ------------------------------------------------------- */
/* Size of the arena to map: set before mapping (0 ok, -1 already mapped). */
int pt_shm_set_size(uint64_t bytes);
/* Configure the size (pt.configure{ shm_size }): 0 ok; -1 not a usable
   size, -2 the arena is already mapped at another size; why says so. */
int pt_shm_configure_size(uint64_t bytes, char *why, size_t n);
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
/* Buffers: a size reason (pt_shm_size_problem), a message, a formatted
   size (pt_shm_format_size). */
#define PT_SHM_WHYLEN 200
#define PT_SHM_MSGLEN 640
#define PT_SHM_SIZELEN 64

/* ---- objects: generations and counts -------------------------------------
   Every arena object (table, shared array) takes a new generation when
   made and stores it in its header (published with a release store);
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

/* Atomic reference counts on arena objects. */
static inline void pt_shm_incref(uint64_t *rc) {
  __atomic_add_fetch(rc, 1, __ATOMIC_RELAXED);
}
/* Returns 1 when the count reached zero (the caller frees). */
static inline int pt_shm_decref(uint64_t *rc) {
  return __atomic_sub_fetch(rc, 1, __ATOMIC_ACQ_REL) == 0;
}

#endif
