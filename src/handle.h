/* handle.h - the toolkit every kind of Lua handle is made with (shared
 * tables, arrays, pipes, workers, channels, semaphores, events, barriers):
 * metatables, type checks by metatable; then handles on the
 * reference-counted arena objects of obj.h (channels, semaphores, events,
 * barriers): their lifetimes and codec references; and waiting from Lua. */
#ifndef PT_HANDLE_H
#define PT_HANDLE_H

#include "pt.h"
#include "obj.h"
#include "wait.h"

typedef struct pt_class {
  const char *tname;           /* metatable name: "procthread.Channel" */
  const char *what;            /* in messages: "channel" */
  uint64_t kind;               /* pt_ref.b of its references */
  int (*valid)(pt_off off);    /* off holds an object of this class */
  /* drop one count (the last destroys), only while the object is of
     generation gen (obj.h) */
  void (*drop)(pt_off off, uint64_t gen);
} pt_class;

/* The userdata.  buf: an encoding buffer kept between sends (busy while
   one is in use, so a finalizer that sends meanwhile gets its own). */
typedef struct pt_handle {
  pt_shm_handle h;
  pt_buf buf;
  int busy;
} pt_handle;

/* ---- the toolkit, for every kind of handle ------------------------------ */
/* A kind of userdata is named by its metatable (tname) and a key: any
   address that stands for the kind (its pt_class, or its pt_xtype).  The
   functions made by pt_meta_open and pt_class_method carry the kind's
   metatable, the key and the kind's pt_seen as upvalues 1, 2 and 3, so
   that pt_udata_test, called from them, need not look the metatable up by
   name (it does when called from elsewhere), and mostly need not compare
   it either: it remembers the last two userdata whose metatables it
   compared (two: a loop that alternates two handles of a kind, a pipe's
   ping-pong on two pipes, hits too),
   if the kind's `live` says it is not yet released, and the kind's __gc
   (the toolkit's, around the kind's own, which releases) forgets it once
   the kind's own has run, so a remembered address is always a live
   userdata of the kind, never memory reused by another.  That holds while
   nobody changes the kind's metatable, and pt_meta_open sets __metatable
   (the kind's name, getmetatable's answer) so that plain Lua cannot.  The
   debug library can (debug.getmetatable(x).__gc, debug.setmetatable, or
   debug.setupvalue on a method's upvalues): that is the trust boundary, as
   for luaL_checkudata, whose registry entry debug.getregistry reaches.
   Comparing the metatable at every call would not close it (the debug
   library reaches upvalue 1 too) and costs a quarter more instructions on
   `st.x = st.x + 1; local _ = #ch` (callgrind, 5.4: 2277 -> 2905). */
typedef struct pt_seen {
  void *last[2];                    /* live userdata of the kind, or NULL */
  int next;                         /* the slot the next one replaces */
  lua_CFunction gc;                 /* the kind's own __gc */
  int (*live)(const void *p);       /* p (of the kind) is not released */
} pt_seen;
/* The userdata at i (p: lua_touserdata's answer) if its metatable is the
   kind's (upvalue 1), else NULL. */
void *pt_udata_test_mt(lua_State *L, int i, void *p);
static inline void *pt_udata_test(lua_State *L, int i, const void *key, const char *tname) {
  void *p;
  const pt_seen *s;
  if (lua_touserdata(L, lua_upvalueindex(2)) != key) return pt_testudata(L, i, tname);
  p = lua_touserdata(L, i);
  s = (const pt_seen *)lua_touserdata(L, lua_upvalueindex(3));
  return p && s && (p == s->last[0] || p == s->last[1]) ? p : pt_udata_test_mt(L, i, p);
}
/* The same, or raise "bad argument #i to 'fn' (<tname> expected, got
   <type>)" as luaL_checkudata words it. */
static inline void *pt_udata_check(lua_State *L, int i, const void *key, const char *tname) {
  void *p = pt_udata_test(L, i, key, tname);
  if (!p) pt_typeerror(L, i, tname);
  return p;
}
/* Create tname's metatable (once per state): meta's functions (which must
   hold a __gc), __name, __metatable (tname), and `methods` (unless NULL)
   in __index, each with the upvalues above; live as above. */
void pt_meta_open(lua_State *L, const char *tname, const void *key, int (*live)(const void *),
                  const luaL_Reg *meta, const luaL_Reg *methods);
/* Set t.name (t: the table on top) to f with the upvalues of key's
   functions (mt: the index of the kind's metatable, made by pt_meta_open). */
void pt_class_method(lua_State *L, int mt, const void *key, const char *name,
                     lua_CFunction f);
/* The same for each of fns, into the table at t. */
void pt_class_methods(lua_State *L, const char *tname, const void *key, int t,
                      const luaL_Reg *fns);

/* ---- handles on obj.h objects --------------------------------------------- */
/* Create the class's metatable: `methods` in __index; __gc, __eq,
   __tostring, __name; __close (5.4) is `closefn`, or __gc when NULL. */
void pt_class_open(lua_State *L, const pt_class *c, const luaL_Reg *methods,
                   lua_CFunction closefn);
/* Push a handle on off, adopting one count the caller holds. */
void pt_handle_push(lua_State *L, const pt_class *c, pt_off off);
/* Raise "bad argument #i to 'fn' (msg)": named even when called through
   pcall or a local, where luaL_argerror says '?'. */
int pt_arg_error(lua_State *L, int i, const char *fn, const char *msg);
/* The handle at i, or raise "<what> expected, got <type>". */
pt_handle *pt_handle_check(lua_State *L, int i, const pt_class *c, const char *fn);
#define PT_HOFF(L, i, c, fn) pt_shm_handle_off(&pt_handle_check(L, i, c, fn)->h)
/* An integer argument in lo..hi (absent or nil: dflt, unless dflt < lo). */
lua_Integer pt_check_int(lua_State *L, int i, lua_Integer dflt, lua_Integer lo,
                         lua_Integer hi, const char *fn, const char *what);

/* The three codec functions of a class, and its pt_xtype. */
const char *pt_handle_encode(lua_State *L, int idx, pt_ref *ref, const pt_class *c);
void pt_handle_release(const pt_ref *ref, const pt_class *c);
const char *pt_handle_decode(lua_State *L, const pt_ref *ref, const pt_class *c);
#define PT_HANDLE_XTYPE(var, cls, tname)                                        \
  static const char *var##_enc(lua_State *L, int i, pt_ref *r) {               \
    return pt_handle_encode(L, i, r, &cls);                                    \
  }                                                                            \
  static void var##_rel(const pt_ref *r) { pt_handle_release(r, &cls); }       \
  static const char *var##_dec(lua_State *L, const pt_ref *r) {                \
    return pt_handle_decode(L, r, &cls);                                       \
  }                                                                            \
  const pt_xtype var = {tname, var##_enc, var##_rel, var##_dec}

/* ---- waiting from Lua --------------------------------------------------- */

/* The cancel flag of the calling thread worker, or NULL. */
const volatile int *pt_cancel_flag(void);
/* A blocking step: a wait.h status. */
typedef int (*pt_waitfn)(void *arg, double deadline, const pt_wake *w);
/* Run fn until it returns something other than PT_INTR, w naming this
   thread's cancel flag and, in the main thread, the interrupt word.  A
   Ctrl-C (a SIGINT this thread has not acted on, before the call or while
   it sleeps) ends it with PT_CANCELLED, which pt_push_status answers
   nil, "interrupted"; so does a signal handler that set a Lua hook
   meanwhile (PT_INTR).  The hook fires as soon as the binding returns to
   Lua. */
int pt_wait_lua(lua_State *L, pt_waitfn fn, void *arg, double deadline);
/* Finish a binding whose wait did not succeed: raise "cancelled", or
   return nil, "timeout" / "closed" / "interrupted", or nil, "<op>:
   <strerror>", errno (PT_ERR; errno saved by the caller in err). */
int pt_push_status(lua_State *L, int status, const char *op, int err);
/* The timeout argument at i as a deadline: nil/absent and math.huge are
   forever; otherwise a number >= 0 (else raise). */
double pt_check_deadline(lua_State *L, int i, int optional, const char *fn);

#endif
