/* obj.h - the header every reference-counted object of queue.c and sync.c
 * starts with in the shared arena.  Plain C, no Lua header.  A magic word
 * per kind lets a reference that arrives in a message be checked before it
 * is used; the count is taken by each handle and each message in flight. */
#ifndef PT_OBJ_H
#define PT_OBJ_H

#include <stdint.h>
#include "shm.h"

typedef struct pt_obj {
  uint32_t magic;              /* the kind's magic; 0 once destroyed */
  uint32_t spare;
  uint64_t refs;
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

static inline void pt_obj_incref(pt_off off) { pt_shm_incref(&PT_OBJ(off)->refs); }
/* 1 when that was the last count: the caller destroys the object. */
static inline int pt_obj_decref(pt_off off) {
  return pt_shm_base && pt_shm_decref(&PT_OBJ(off)->refs);
}

#endif
