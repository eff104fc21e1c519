/* arena_lua.h - the arena seen from Lua (arena_lua.c): its functions
 * (pt.configure, pt.shm_stats, pt._shm_check, pt.release,
 * pt._shm_release), the process hooks of the shared-memory files, and the
 * registry of handle kinds.  pt_push_shm_error is declared in pt.h. */
#ifndef PT_ARENA_LUA_H
#define PT_ARENA_LUA_H

#include "pt.h"
#include "shm.h"

/* Register the fork and exit hooks of the arena and its handles (safe to
   call again). */
void pt_shm_init_process(void);

/* What pt.release and pt._shm_release do with one kind of handle.  Each
   returns 0 when the value at idx is not of this kind, else 1 once done:
   release: drop the handle's count now (safe twice); drop_count: drop one
   count on the object, leaving the handle as it is (0 as well when this
   kind of handle holds no arena count). */
typedef struct pt_shm_kind {
  int (*release)(lua_State *L, int idx);
  int (*drop_count)(lua_State *L, int idx);
} pt_shm_kind;
void pt_shm_register_kind(int kind, const pt_shm_kind *k);

/* Add the arena's functions to the module table at -1 (and init). */
void pt_open_arena(lua_State *L);

#endif
