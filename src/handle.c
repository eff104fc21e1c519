/* handle.c - Lua handles on arena objects, and waiting from Lua (handle.h). */
#include "handle.h"
#include "arena_lua.h"
#include "wait.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* ---- handles ---------------------------------------------------------------- */

/* The handle of class c at i, or NULL. */
static pt_handle *tohandle(lua_State *L, int i, const pt_class *c) {
  return (pt_handle *)pt_udata_test(L, i, c, c->tname);
}

void *pt_udata_test_mt(lua_State *L, int i, void *p) {
  pt_seen *s;
  int ours;
  if (!p || !lua_getmetatable(L, i)) return NULL;
  ours = lua_rawequal(L, -1, lua_upvalueindex(1));
  lua_pop(L, 1);
  if (!ours) return NULL;
  s = (pt_seen *)lua_touserdata(L, lua_upvalueindex(3));
  if (s && s->live(p)) {
    s->last[s->next] = p;
    s->next ^= 1;
  }
  return p;
}

/* Every kind's __gc: the kind's own, then forget the userdata (after: the
   kind's own checks it, which remembers it while it is not yet released;
   a __gc that raises does so on a userdata of another kind, never
   remembered). */
static int udata_gc(lua_State *L) {
  pt_seen *s = (pt_seen *)lua_touserdata(L, lua_upvalueindex(3));
  void *p = lua_touserdata(L, 1);
  int n = s->gc(L);
  if (s->last[0] == p) s->last[0] = NULL;
  if (s->last[1] == p) s->last[1] = NULL;
  return n;
}

/* The kind's pt_seen, pushed: kept in its metatable at mt[key], made when
   absent. */
static pt_seen *push_seen(lua_State *L, int mt, const void *key) {
  pt_seen *s;
  lua_pushlightuserdata(L, (void *)key);
  lua_rawget(L, mt);
  if ((s = (pt_seen *)lua_touserdata(L, -1)) != NULL) return s;
  lua_pop(L, 1);
  s = (pt_seen *)pt_newuserdata(L, sizeof *s);
  memset(s, 0, sizeof *s);
  lua_pushlightuserdata(L, (void *)key);
  lua_pushvalue(L, -2);
  lua_rawset(L, mt);
  return s;
}

void pt_class_method(lua_State *L, int mt, const void *key, const char *name,
                     lua_CFunction f) {
  pt_seen *s;
  mt = pt_absindex(L, mt);
  lua_pushvalue(L, mt);
  lua_pushlightuserdata(L, (void *)key);
  s = push_seen(L, mt, key);                               /* L: ... t mt key seen */
  if (strcmp(name, "__gc") == 0) {
    s->gc = f;
    f = udata_gc;
  }
  lua_pushcclosure(L, f, 3);
  lua_setfield(L, -2, name);
}

void pt_class_methods(lua_State *L, const char *tname, const void *key, int t,
                      const luaL_Reg *fns) {
  t = pt_absindex(L, t);
  luaL_getmetatable(L, tname);
  lua_pushvalue(L, t);                                     /* L: ... mt t */
  for (; fns->name; fns++) pt_class_method(L, -2, key, fns->name, fns->func);
  lua_pop(L, 2);
}

void pt_meta_open(lua_State *L, const char *tname, const void *key, int (*live)(const void *),
                  const luaL_Reg *meta, const luaL_Reg *methods) {
  if (luaL_newmetatable(L, tname)) {
    push_seen(L, lua_gettop(L), key)->live = live;
    lua_pop(L, 1);
    pt_class_methods(L, tname, key, -1, meta);
    lua_pushstring(L, tname);
    lua_setfield(L, -2, "__name");
    lua_pushstring(L, tname);          /* getmetatable's answer; setmetatable raises */
    lua_setfield(L, -2, "__metatable");
    if (methods) {
      lua_newtable(L);
      pt_class_methods(L, tname, key, -1, methods);
      lua_setfield(L, -2, "__index");
    }
  }
  lua_pop(L, 1);
}

int pt_arg_error(lua_State *L, int i, const char *fn, const char *msg) {
  lua_Debug ar;
  /* numbered as luaL_argerror does: a method call does not count self */
  if (lua_getstack(L, 0, &ar) && lua_getinfo(L, "n", &ar) && ar.namewhat &&
      strcmp(ar.namewhat, "method") == 0 && --i == 0)
    return luaL_error(L, "calling '%s' on bad self (%s)", fn, msg);
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

/* A refused argument as an error says it: the number (d, its value),
   "nan" for any NaN (x86's 0/0 prints as "-nan"), else its type. */
static const char *arg_text(lua_State *L, int i, double d) {
  if (lua_type(L, i) != LUA_TNUMBER) return luaL_typename(L, i);
  return d != d ? "nan" : lua_tostring(L, i);
}

lua_Integer pt_check_int(lua_State *L, int i, lua_Integer dflt, lua_Integer lo,
                         lua_Integer hi, const char *fn, const char *what) {
  double d;
  if (dflt >= lo && lua_isnoneornil(L, i)) return dflt;
  d = lua_type(L, i) == LUA_TNUMBER ? (double)lua_tonumber(L, i) : -HUGE_VAL;
  if (!(d >= (double)lo && d <= (double)hi && floor(d) == d))
    pt_arg_error(L, i, fn, lua_pushfstring(L, "%s must be an integer in %d..%d, got %s",
                                           what, (int)lo, (int)hi, arg_text(L, i, d)));
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

/* The class of a metamethod made by pt_class_open: its key (upvalue 2). */
#define UPCLASS(L) ((const pt_class *)lua_touserdata(L, lua_upvalueindex(2)))

static int h_live(const void *p) { return pt_shm_handle_off(&((const pt_handle *)p)->h) != 0; }

/* __gc: drop the count (once) and the buffer. */
static int h_gc(lua_State *L) {
  const pt_class *c = UPCLASS(L);
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
  lua_getfield(L, -1, "__gc");                              /* L: mt gc */
  if (lua_tocfunction(L, -1) == udata_gc && lua_getupvalue(L, -1, 3)) {
    const pt_seen *s = (const pt_seen *)lua_touserdata(L, -1);
    lua_getupvalue(L, -2, 2);                               /* L: mt gc seen key */
    if (s && s->gc == h_gc) c = (const pt_class *)lua_touserdata(L, -1);
    lua_pop(L, 2);
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
  const pt_class *c = UPCLASS(L);
  pt_handle *a = tohandle(L, 1, c), *b = tohandle(L, 2, c);
  lua_pushboolean(L, a && b && pt_shm_handle_off(&a->h) && pt_shm_handle_off(&a->h) == pt_shm_handle_off(&b->h));
  return 1;
}

static int h_tostring(lua_State *L) {
  const pt_class *c = UPCLASS(L);
  pt_handle *h = tohandle(L, 1, c);
  if (h && pt_shm_handle_off(&h->h)) lua_pushfstring(L, "%s: %p", c->tname, (void *)(uintptr_t)pt_shm_handle_off(&h->h));
  else lua_pushfstring(L, "%s (released)", c->tname);
  return 1;
}

void pt_class_open(lua_State *L, const pt_class *c, const luaL_Reg *methods,
                   lua_CFunction closefn) {
  const luaL_Reg meta[] = {
    {"__gc", h_gc}, {"__eq", h_eq}, {"__tostring", h_tostring},
#if LUA_VERSION_NUM >= 504
    {"__close", closefn ? closefn : h_gc},
#endif
    {NULL, NULL}};
  (void)closefn;
  pt_meta_open(L, c->tname, c, h_live, meta, methods);
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
                                           arg_text(L, i, t)));
  return pt_deadline(t);
}
