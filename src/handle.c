/* handle.c - Lua handles on arena objects, and waiting from Lua (handle.h). */
#include "handle.h"
#include "arena_lua.h"
#include "wait.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* ---- handles ---------------------------------------------------------------- */

/* The handle of class c at i, or NULL.  The methods of c carry the
   address of its metatable (which the registry keeps) and c as upvalues
   1 and 2 (pt_class_open): they compare addresses without the registry's
   lookup by name. */
static pt_handle *tohandle(lua_State *L, int i, const pt_class *c) {
  void *p;
  const void *mt;
  if (lua_touserdata(L, lua_upvalueindex(2)) != (void *)c)
    return (pt_handle *)pt_testudata(L, i, c->tname);
  if (!(p = lua_touserdata(L, i)) || !lua_getmetatable(L, i)) return NULL;
  mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  return mt == lua_touserdata(L, lua_upvalueindex(1)) ? (pt_handle *)p : NULL;
}

int pt_arg_error(lua_State *L, int i, const char *fn, const char *msg) {
  return luaL_error(L, "bad argument #%d to '%s' (%s)", i, fn, msg);
}

pt_handle *pt_handle_check(lua_State *L, int i, const pt_class *c, const char *fn) {
  pt_handle *h = tohandle(L, i, c);
  if (!h)
    pt_arg_error(L, i, fn, lua_pushfstring(L, "%s expected, got %s", c->what,
                                           luaL_typename(L, i)));
  if (!pt_shm_handle_off(&h->h)) pt_arg_error(L, i, fn, lua_pushfstring(L, "%s is released", c->what));
  if (!pt_obj_live(pt_shm_handle_off(&h->h), h->h.gen))
    luaL_error(L, "%s: %s has been freed (a count on it was dropped too often; its "
               "memory may hold something else now)", fn, c->what);
  return h;
}

lua_Integer pt_check_int(lua_State *L, int i, lua_Integer dflt, lua_Integer lo,
                         lua_Integer hi, const char *fn, const char *what) {
  double d;
  if (dflt >= lo && lua_isnoneornil(L, i)) return dflt;
  d = lua_type(L, i) == LUA_TNUMBER ? (double)lua_tonumber(L, i) : -HUGE_VAL;
  if (!(d >= (double)lo && d <= (double)hi && floor(d) == d))
    pt_arg_error(L, i, fn, lua_pushfstring(L, "%s must be an integer in %d..%d, got %s",
                                           what, (int)lo, (int)hi,
                                           lua_type(L, i) == LUA_TNUMBER
                                             ? lua_tostring(L, i) : luaL_typename(L, i)));
  return (lua_Integer)d;
}

void pt_handle_push(lua_State *L, const pt_class *c, pt_off off) {
  pt_handle *h = (pt_handle *)pt_newuserdata(L, sizeof(pt_handle));
  memset(h, 0, sizeof *h);
  pt_buf_init(&h->buf);
  luaL_getmetatable(L, c->tname);
  lua_setmetatable(L, -2);
  pt_shm_track(&h->h, off, pt_obj_gen(off), (int)c->kind, c->drop);
}

/* __gc: drop the count (once) and the buffer.  The class is found by the
   upvalue set in pt_class_open. */
static int h_gc(lua_State *L) {
  const pt_class *c = (const pt_class *)lua_touserdata(L, lua_upvalueindex(1));
  pt_handle *h = tohandle(L, 1, c);
  if (h) {
    pt_shm_release(&h->h);
    pt_buf_free(&h->buf);
  }
  return 0;
}

/* The class of the handle at idx, whatever its class, or NULL: its
   metatable's __gc is h_gc, whose upvalue names the class. */
static const pt_class *class_of(lua_State *L, int idx) {
  const pt_class *c = NULL;
  if (!lua_touserdata(L, idx) || !lua_getmetatable(L, idx)) return NULL;
  lua_getfield(L, -1, "__gc");
  if (lua_tocfunction(L, -1) == h_gc && lua_getupvalue(L, -1, 1)) {
    c = (const pt_class *)lua_touserdata(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return c;
}

/* pt._shm_release (arena_lua.h): one count dropped, the handle left as it
   is; pt.release takes none of these handles. */
static int obj_drop_count(lua_State *L, int idx) {
  const pt_class *c = class_of(L, idx);
  pt_handle *h;
  if (!c) return 0;
  h = pt_handle_check(L, idx, c, "_shm_release");
  c->drop(pt_shm_handle_off(&h->h), h->h.gen);
  return 1;
}
static int obj_release(lua_State *L, int idx) { (void)L; (void)idx; return 0; }
static const pt_shm_kind obj_kind = {obj_release, obj_drop_count};

static int h_eq(lua_State *L) {
  const pt_class *c = (const pt_class *)lua_touserdata(L, lua_upvalueindex(1));
  pt_handle *a = tohandle(L, 1, c), *b = tohandle(L, 2, c);
  lua_pushboolean(L, a && b && pt_shm_handle_off(&a->h) && pt_shm_handle_off(&a->h) == pt_shm_handle_off(&b->h));
  return 1;
}

static int h_tostring(lua_State *L) {
  const pt_class *c = (const pt_class *)lua_touserdata(L, lua_upvalueindex(1));
  pt_handle *h = tohandle(L, 1, c);
  if (h && pt_shm_handle_off(&h->h)) lua_pushfstring(L, "%s: %p", c->tname, (void *)(uintptr_t)pt_shm_handle_off(&h->h));
  else lua_pushfstring(L, "%s (released)", c->tname);
  return 1;
}

static void set_meta(lua_State *L, const pt_class *c, const char *name, lua_CFunction f) {
  lua_pushlightuserdata(L, (void *)c);
  lua_pushcclosure(L, f, 1);
  lua_setfield(L, -2, name);
}

void pt_class_method(lua_State *L, int mt, const pt_class *c, const char *name,
                     lua_CFunction f) {
  mt = pt_absindex(L, mt);
  lua_pushlightuserdata(L, (void *)lua_topointer(L, mt));
  lua_pushlightuserdata(L, (void *)c);
  lua_pushcclosure(L, f, 2);
  lua_setfield(L, -2, name);
}

void pt_class_open(lua_State *L, const pt_class *c, const luaL_Reg *methods,
                   lua_CFunction closefn) {
  if (luaL_newmetatable(L, c->tname)) {
    set_meta(L, c, "__gc", h_gc);
    set_meta(L, c, "__eq", h_eq);
    set_meta(L, c, "__tostring", h_tostring);
#if LUA_VERSION_NUM >= 504
    if (closefn) lua_pushcfunction(L, closefn), lua_setfield(L, -2, "__close");
    else set_meta(L, c, "__close", h_gc);
#else
    (void)closefn;
#endif
    lua_pushstring(L, c->tname);
    lua_setfield(L, -2, "__name");
    lua_newtable(L);
    for (; methods->name; methods++) pt_class_method(L, -2, c, methods->name, methods->func);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  pt_shm_register_kind(PT_KIND_OBJ, &obj_kind);
}

/* ---- codec references ------------------------------------------------------- */

/* A reference: a = the offset, b = the generation << 8 | the class's kind
   (generations count objects made, far below 2^56). */
#define REF_GEN(ref) ((ref)->b >> 8)

const char *pt_handle_encode(lua_State *L, int idx, pt_ref *ref, const pt_class *c) {
  pt_handle *h = tohandle(L, idx, c);
  pt_off off = h ? pt_shm_handle_off(&h->h) : 0;
  if (!off) return "released handle";
  if (!pt_obj_take(off, h->h.gen)) return "handle has been freed";
  ref->a = off;
  ref->b = h->h.gen << 8 | c->kind;
  return NULL;
}

static int valid_ref(const pt_ref *ref, const pt_class *c) {
  return (ref->b & 0xff) == c->kind && c->valid(ref->a) && pt_obj_live(ref->a, REF_GEN(ref));
}

void pt_handle_release(const pt_ref *ref, const pt_class *c) {
  if (valid_ref(ref, c)) c->drop(ref->a, REF_GEN(ref));
}

const char *pt_handle_decode(lua_State *L, const pt_ref *ref, const pt_class *c) {
  if (!valid_ref(ref, c)) return "corrupt message (bad reference)";
  pt_handle_push(L, c, ref->a);
  return NULL;
}

/* ---- waiting from Lua -------------------------------------------------------- */

const volatile int *pt_cancel_flag(void) {
  pt_ctx *c = pt_self_ctx;
  return c ? c->cancel : NULL;
}

int pt_wait_lua(lua_State *L, pt_waitfn fn, void *arg, double deadline) {
  lua_Hook before = lua_gethook(L);
  int mask = lua_gethookmask(L), r;
  pt_wake w;
  w.cancel = pt_cancel_flag();
  for (;;) {
    if (pt_interrupted()) return PT_CANCELLED;         /* "interrupted" */
    w.intr = pt_interrupt_word(&w.intr_expected);
    r = fn(arg, deadline, &w);
    if (r != PT_INTR) return r;
    if (pt_interrupted()) return PT_CANCELLED;
    if (lua_gethook(L) != before || lua_gethookmask(L) != mask) return PT_INTR;
  }
}

int pt_push_status(lua_State *L, int status, const char *op, int err) {
  switch (status) {
    case PT_CANCELLED: return pt_raise_cancelled(L);
    case PT_TIMEOUT: lua_pushnil(L); lua_pushliteral(L, "timeout"); return 2;
    case PT_CLOSED: lua_pushnil(L); lua_pushliteral(L, "closed"); return 2;
    case PT_INTR: lua_pushnil(L); lua_pushliteral(L, "interrupted"); return 2;
    default: return pt_push_oserror(L, op, err);
  }
}

double pt_check_deadline(lua_State *L, int i, int optional, const char *fn) {
  double t = lua_type(L, i) == LUA_TNUMBER ? (double)lua_tonumber(L, i) : -1;
  if (optional && lua_isnoneornil(L, i)) return PT_FOREVER;
  if (!(t >= 0))
    pt_arg_error(L, i, fn, lua_pushfstring(L, "timeout must be a number >= 0 or math.huge, got %s",
                                           lua_type(L, i) == LUA_TNUMBER
                                             ? lua_tostring(L, i) : luaL_typename(L, i)));
  return pt_deadline(t);
}
