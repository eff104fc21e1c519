/* obj.h - the header every reference-counted object of queue.c and sync.c
 * starts with in the shared arena.  Plain C, no Lua header.  A magic word
 * per kind lets a reference that arrives in a message be checked before it
 * is used; the count is taken by each handle and each message in flight.
 * Like tables and shared arrays, each object carries a generation
 * (arena.h, pt_shm_new_gen): a handle or reference keeps the one it
 * adopted and touches the object only while the header still holds it. */
#ifndef PT_OBJ_H
#define PT_OBJ_H

#include <stdint.h>
#include "shm.h"

typedef struct pt_obj {
  uint32_t magic;              /* the kind's magic; 0 once destroyed */
  uint32_t spare;
  uint64_t refs;
  uint64_t gen;                /* see pt_shm_new_gen; 0 once destroyed */
} pt_obj;

#define PT_OBJ(off) PT_SHM_PTR(pt_obj, off)

/* 1 when off is inside the arena, 64-aligned, and holds an object of this
   magic (objects are allocated 64-aligned). */
static inline int pt_obj_valid(pt_off off, uint32_t magic, size_t size) {
  uint64_t arena = pt_shm_config_size();
  if (!pt_shm_base || off < 64 || off % 64 || size > arena || off > arena - size)
    return 0;
  return __atomic_load_n(&PT_OBJ(off)->magic, __ATOMIC_ACQUIRE) == magic;
}

/* A new object's header: one count, a new generation, then the magic
   (release stores: whoever sees the magic sees the rest). */
static inline void pt_obj_publish(pt_off off, uint32_t magic) {
  pt_obj *o = PT_OBJ(off);
  o->refs = 1;
  pt_shm_gen_publish(&o->gen, pt_shm_new_gen());
  __atomic_store_n(&o->magic, magic, __ATOMIC_RELEASE);
}
static inline uint64_t pt_obj_gen(pt_off off) {
  return __atomic_load_n(&PT_OBJ(off)->gen, __ATOMIC_ACQUIRE);
}
/* Is the object at off still the one of generation gen? */
static inline int pt_obj_live(pt_off off, uint64_t gen) {
  return pt_shm_base && pt_shm_gen_ok(&PT_OBJ(off)->gen, gen);
}
/* One more count, only while gen holds: 1 taken, 0 (freed) not. */
static inline int pt_obj_take(pt_off off, uint64_t gen) {
  if (!pt_obj_live(off, gen)) return 0;
  pt_shm_incref(&PT_OBJ(off)->refs);
  return 1;
}
/* Drop one count, only while gen holds.  1 when that was the last: the
   generation and magic are cleared, and the caller destroys the object. */
static inline int pt_obj_drop(pt_off off, uint64_t gen) {
  pt_obj *o;
  if (!pt_obj_live(off, gen)) return 0;
  o = PT_OBJ(off);
  if (!pt_shm_decref(&o->refs)) return 0;
  pt_shm_gen_kill(&o->gen);
  __atomic_store_n(&o->magic, 0, __ATOMIC_RELAXED);
  return 1;
}

#endif
