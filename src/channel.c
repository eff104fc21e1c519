/* channel.c - pt.channel: the Lua binding of the queue in the arena
 * (queue.c).  Messages are encoded by the codec; shared objects inside
 * them travel by reference, their counts held by the queued message. */
#include "handle.h"
#include "queue.h"
#include "wait.h"
#include "worker.h"

#include <errno.h>
#include <limits.h>
#include <string.h>

#define CHANNEL_MT "procthread.Channel"
#define KIND_CHANNEL 0x10
#define DEFAULT_CAPACITY 64

static void ch_drop(pt_off off, uint64_t gen) { pt_queue_decref(off, gen, pt_discard); }

static const pt_class channel_class = {CHANNEL_MT, "channel", KIND_CHANNEL,
                                       pt_queue_valid, ch_drop};

PT_HANDLE_XTYPE(pt_xtype_channel, channel_class, CHANNEL_MT);

/* pt.channel([capacity]) -> ch */
static int l_channel(lua_State *L) {
  lua_Integer cap = pt_check_int(L, 1, DEFAULT_CAPACITY, 1, PT_QUEUE_MAXCAP,
                                 "channel", "capacity");
  pt_off off;
  if (pt_shm_ensure() != 0) return pt_push_shm_error(L, errno);
  off = pt_queue_new((uint32_t)cap);
  if (!off && errno == ENOMEM) {
    lua_gc(L, LUA_GCCOLLECT, 0);             /* garbage handles may hold space */
    off = pt_queue_new((uint32_t)cap);
  }
  if (!off) {
    if (errno == ENOMEM) return luaL_error(L, "channel: %s", pt_shm_full_msg());
    return pt_push_oserror(L, "channel", errno);
  }
  pt_handle_push(L, &channel_class, off);
  return 1;
}

/* ---- send ----------------------------------------------------------------------- */

typedef struct op {
  pt_off q;
  pt_qmsg m;
} op;

static int put_step(void *arg, double deadline, const pt_wake *w) {
  op *o = (op *)arg;
  return pt_queue_put(o->q, &o->m, deadline, w);
}

/* The n values from index `first` as one message, then the tlen bytes at
   tail (a whole message of plain values, or none: pools), waiting up to
   the deadline for room. */
static int put_values(lua_State *L, int first, int n, const char *tail, size_t tlen,
                      double deadline, const char *fn) {
  pt_handle *h = pt_handle_check(L, 1, &channel_class, fn);
  pt_buf own, *b = h->busy ? &own : &h->buf;
  char err[PT_ERRLEN];
  op o;
  int r, e;
  pt_buf_init(&own);
  b->len = 0;
  if (b == &h->buf) h->busy = 1;
  if (!pt_encode(L, first, n, "message", b, err, sizeof err)) {
    if (b == &h->buf) h->busy = 0;
    pt_buf_free(&own);
    return luaL_error(L, "%s: %s", fn, err);
  }
  if (tlen && pt_buf_add(b, tail, tlen) != 0) {
    pt_discard(b->data, b->len);
    if (b == &h->buf) h->busy = 0;
    pt_buf_free(&own);
    return luaL_error(L, "%s: out of memory", fn);
  }
  o.q = pt_shm_handle_off(&h->h);
  pt_qmsg_init(&o.m, b->data ? b->data : "", b->len);
  r = pt_wait_lua(L, put_step, &o, deadline);
  if (r == PT_NOMEM) {                        /* garbage handles may hold space */
    lua_gc(L, LUA_GCCOLLECT, 0);
    r = pt_wait_lua(L, put_step, &o, deadline);
  }
  e = errno;
  if (b == &h->buf) h->busy = 0;
  if (r == PT_OK) {
    pt_buf_free(&own);
    lua_pushboolean(L, 1);
    return 1;
  }
  pt_qmsg_done(&o.m);                         /* nothing was queued */
  pt_discard(b->data ? b->data : "", b->len);
  pt_buf_free(&own);
  if (r == PT_NOMEM) return luaL_error(L, "%s: %s", fn, pt_shm_full_msg());
  return pt_push_status(L, r, "channel send", e);
}

/* The values from index `first` on as one message. */
static int put(lua_State *L, int first, double deadline, const char *fn) {
  return put_values(L, first, lua_gettop(L) - first + 1, NULL, 0, deadline, fn);
}

/* ch:send(...) -> true | nil, "closed" */
static int l_send(lua_State *L) { return put(L, 2, PT_FOREVER, "send"); }

/* ch:offer(timeout, ...) -> true | nil, "timeout" | nil, "closed" */
static int l_offer(lua_State *L) {
  double deadline;
  pt_handle_check(L, 1, &channel_class, "offer");
  deadline = pt_check_deadline(L, 2, 0, "offer");
  return put(L, 3, deadline, "offer");
}

/* ---- pools' internal sends ------------------------------------------------------ */

/* ch:_offer_cat(timeout, payload, v1..vk) (internal, pools): offer of one
   message, v1..vk followed by the message `payload` (an encoded string) in
   place: its values come after v1..vk, as if sent with them.  v1..vk must
   be plain (nil, booleans, numbers, strings: they number no tables or
   functions, so the payload's ids stay its own), and a payload that
   starts with a ticket (it holds references) decodes only from its
   start: that one goes as one more value, a string, as offer sends it. */
static int l_offer_cat(lua_State *L) {
  double deadline;
  size_t n;
  const char *s;
  int i, top;
  pt_off q = PT_HOFF(L, 1, &channel_class, "_offer_cat");
  deadline = pt_check_deadline(L, 2, 0, "_offer_cat");
  s = luaL_checklstring(L, 3, &n);
  if ((n = pt_unseal(s, n)) == (size_t)-1) return luaL_argerror(L, 3, "corrupt message");
  /* no room now, and no wait: said before the message is made (a pool
     offers as soon as it may; building the message and discarding it cost
     about 25000 instructions a 1000-item chunk) */
  if (lua_tonumber(L, 2) == 0 && pt_queue_count(q) >= pt_queue_capacity(q)) {
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  top = lua_gettop(L);
  for (i = 4; i <= top; i++) {
    int t = lua_type(L, i);
    if (t != LUA_TNIL && t != LUA_TBOOLEAN && t != LUA_TNUMBER && t != LUA_TSTRING)
      return luaL_argerror(L, i, "a plain value expected");
  }
  if (n > 0 && s[0] == PT_TICKET_TAG) {
    lua_pushvalue(L, 3);                      /* L: ch t payload v1..vk payload */
    return put(L, 4, deadline, "_offer_cat");
  }
  return put_values(L, 4, top - 3, s, n, deadline, "_offer_cat");
}

/* list[i] as Lua reads it (metamethods; raw, the cheaper read, when the
   list has no metatable) */
static void ch_geti(lua_State *L, int list, lua_Integer i, int raw) {
  if (raw) {
    lua_rawgeti(L, list, (int)i);
    return;
  }
#if LUA_VERSION_NUM >= 503
  lua_geti(L, list, i);
#else
  lua_pushinteger(L, i);
  lua_gettable(L, list);
#endif
}

/* ch:_encode_chunk(t, key, list, first, last, fn) (internal, pools): a
   map chunk's payload, the message (count, list[first] .. list[last], fn)
   with count = last - first + 1 (at most 8000), read from the list as Lua
   reads it (a proxy's __index may raise: nothing is made then), stored as
   t[key] (raw) before it returns, and returned.  The plain items come
   first: a receiver decodes them in its fast pass. */
static int l_encode_chunk(lua_State *L) {
  pt_handle *h = pt_handle_check(L, 1, &channel_class, "_encode_chunk");
  lua_Integer first, last, i;
  pt_buf own, *b;
  char err[PT_ERRLEN];
  int ok, raw;
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checkany(L, 3);
  first = luaL_checkinteger(L, 5);
  last = luaL_checkinteger(L, 6);
  luaL_checkany(L, 7);
  if (last < first || last - first >= 8000) return luaL_argerror(L, 6, "1 to 8000 items expected");
  lua_settop(L, 7);
  luaL_checkstack(L, (int)(last - first) + 8, "pool chunk");
  raw = !lua_getmetatable(L, 4) && lua_type(L, 4) == LUA_TTABLE && first >= INT_MIN && last <= INT_MAX;
  if (!raw) lua_settop(L, 7);
  lua_pushinteger(L, last - first + 1);       /* L: ch t key list first last fn count */
  for (i = first; i <= last; i++) ch_geti(L, 4, i, raw);
  lua_pushvalue(L, 7);                        /* L: ... count items.. fn */
  b = h->busy ? &own : &h->buf;
  pt_buf_init(&own);
  b->len = 0;
  if (b == &h->buf) h->busy = 1;
  ok = pt_encode(L, 8, lua_gettop(L) - 7, "values", b, err, sizeof err);
  if (ok && pt_seal(b)) {                     /* the payload is a pt.encode string */
    ok = 0;
    snprintf(err, sizeof err, "out of memory");
  }
  if (ok) {
    lua_settop(L, 3);                         /* L: ch t key */
    lua_pushlstring(L, b->data ? b->data : "", b->len);
  }
  if (b == &h->buf) h->busy = 0;
  pt_buf_free(&own);
  if (!ok) return luaL_error(L, "%s", err);
  lua_pushvalue(L, 3);
  lua_pushvalue(L, -2);                       /* L: ch t key s key s */
  lua_rawset(L, 2);
  return 1;
}

/* ch:_send_list(list, n, v1..vk) (internal, pools): send of one message,
   v1..vk then list[1] .. list[n] (raw reads). */
static int l_send_list(lua_State *L) {
  lua_Integer n, i;
  pt_handle_check(L, 1, &channel_class, "_send_list");
  luaL_checktype(L, 2, LUA_TTABLE);
  n = pt_check_int(L, 3, 0, 0, 8000, "_send_list", "n");
  luaL_checkstack(L, (int)n + 8, "channel message");
  for (i = 1; i <= n; i++) lua_rawgeti(L, 2, (int)i);
  return put(L, 4, PT_FOREVER, "_send_list");
}

/* ch:_end_note(w, v1..vk) (internal, pools): if the thread worker w ends
   before its function runs (thread.c: it cannot say so itself), the
   message v1..vk (plain values) goes on ch; a process worker: nothing
   (its pool's watcher sees every end). */
static int l_end_note(lua_State *L) {
  pt_handle *h = pt_handle_check(L, 1, &channel_class, "_end_note");
  pt_off q = pt_shm_handle_off(&h->h);
  uint64_t gen = h->h.gen;
  pt_worker *w;
  char err[PT_ERRLEN];
  pt_buf b;
  if (!pt_worker_get(L, 2, &w)) return pt_typeerror(L, 2, PT_WORKER_MT);
  if (!w) return luaL_error(L, "_end_note: the worker belongs to another process, or was released");
  if (w->kind != PT_THREAD) return 0;
  pt_buf_init(&b);
  if (!pt_encode(L, 3, lua_gettop(L) - 2, "message", &b, err, sizeof err)) {
    pt_buf_free(&b);
    return luaL_error(L, "_end_note: %s", err);
  }
  if (!pt_obj_take(q, gen)) {
    pt_discard(b.data ? b.data : "", b.len);
    pt_buf_free(&b);
    return luaL_error(L, "_end_note: channel has been released");
  }
  pt_thread_end_note(w, q, gen, b.data, b.len);
  return 0;
}

/* ---- recv ------------------------------------------------------------------------ */

static int get_step(void *arg, double deadline, const pt_wake *w) {
  op *o = (op *)arg;
  return pt_queue_get(o->q, &o->m, deadline, w);
}

/* L: ... v1..vk err -> nil, "undecodable", err, v1..vk (the values of a
   message that decoded whole before the failure). */
static int undecodable(lua_State *L, int whole) {
  lua_pushnil(L);                              /* L: ... v1..vk err nil */
  lua_insert(L, -2 - whole);
  lua_pushliteral(L, "undecodable");
  lua_insert(L, -2 - whole);                   /* L: ... nil "undecodable" v1..vk err */
  lua_insert(L, -1 - whole);                   /* L: ... nil "undecodable" err v1..vk */
  return whole + 3;
}

/* The oldest message's values.  A message that does not decode raises,
   or (head) returns nil, "undecodable", the error, then the values that
   decoded whole before the failure (pools: the task it answers). */
static int recv(lua_State *L, int head, const char *fn) {
  op o;
  double deadline;
  int r, n, whole;
  o.q = PT_HOFF(L, 1, &channel_class, fn);
  deadline = pt_check_deadline(L, 2, 1, fn);
  r = pt_wait_lua(L, get_step, &o, deadline);
  if (r != PT_OK) return pt_push_status(L, r, "channel recv", errno);
  n = head ? pt_decode_head(L, o.m.data, o.m.len, &whole) : pt_decode(L, o.m.data, o.m.len);
  pt_qmsg_done(&o.m);
  if (n >= 0) return n;
  if (!head) return lua_error(L);
  return undecodable(L, whole);
}

/* ch:_recv_into(route, k [, timeout]) (internal, pools): _recv, but when
   route[v1] is a table with `into` (a table) and `at` (an integer), the
   values after the first k go to into[at], into[at + 1], ...: returns v1..vk
   and their count.  Otherwise as _recv. */
static int l_recv_into(lua_State *L) {
  op o;
  double deadline;
  int r, n, k, whole, stored;
  o.q = PT_HOFF(L, 1, &channel_class, "_recv_into");
  luaL_checktype(L, 2, LUA_TTABLE);
  k = (int)pt_check_int(L, 3, 1, 1, 250, "_recv_into", "k");
  deadline = pt_check_deadline(L, 4, 1, "_recv_into");
  r = pt_wait_lua(L, get_step, &o, deadline);
  if (r != PT_OK) return pt_push_status(L, r, "channel recv", errno);
  lua_settop(L, 2);
  n = pt_decode_into(L, o.m.data, o.m.len, 2, k, &stored, &whole);
  pt_qmsg_done(&o.m);
  if (n < 0) return undecodable(L, whole);
  if (stored < 0) return n;
  lua_pushinteger(L, stored);
  return n + 1;
}

/* ch:_list(n) (internal, pools): a new table with room for n array items,
   which a map's chunks fill in any order (_recv_into) without rehashing. */
static int l_list(lua_State *L) {
  lua_Integer n;
  pt_handle_check(L, 1, &channel_class, "_list");
  n = pt_check_int(L, 2, 0, 0, 1 << 26, "_list", "n");
  lua_createtable(L, (int)n, 0);
  return 1;
}

/* ch:recv([timeout]) -> values | nil, "timeout" | nil, "closed" */
static int l_recv(lua_State *L) { return recv(L, 0, "recv"); }

/* ch:_recv([timeout]) (internal, pools): recv, but an undecodable message
   gives nil, "undecodable", err, and the values before the failure. */
static int l_recv_head(lua_State *L) { return recv(L, 1, "_recv"); }

/* ---- the rest --------------------------------------------------------------------- */

static int l_close(lua_State *L) {
  pt_queue_close(PT_HOFF(L, 1, &channel_class, "close"));
  return 0;
}

static int l_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)pt_queue_count(PT_HOFF(L, 1, &channel_class, "__len")));
  return 1;
}

static int l_capacity(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)pt_queue_capacity(PT_HOFF(L, 1, &channel_class, "capacity")));
  return 1;
}

/* __close (5.4): `local ch <close> = pt.channel()` closes it at scope end. */
static int l_close_meta(lua_State *L) {
  if (pt_testudata(L, 1, CHANNEL_MT)) l_close(L);
  return 0;
}

void pt_open_channel(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"send", l_send}, {"offer", l_offer}, {"recv", l_recv}, {"close", l_close},
    {"capacity", l_capacity}, {"_recv", l_recv_head},
    {"_recv_into", l_recv_into}, {"_list", l_list}, {"_offer_cat", l_offer_cat},
    {"_encode_chunk", l_encode_chunk}, {"_send_list", l_send_list}, {"_end_note", l_end_note},
    {NULL, NULL}};
  pt_class_open(L, &channel_class, methods, l_close_meta);
  luaL_getmetatable(L, CHANNEL_MT);
  pt_class_method(L, -1, &channel_class, "__len", l_len);   /* #ch: a method's fast check */
  lua_pop(L, 1);
  lua_pushcfunction(L, l_channel);
  lua_setfield(L, -2, "channel");
}
