/* pipe.c - message pipes: pt.pipe(), p:send/recv/close... (pt.select: select.c).
 *
 * This file: the registry of this process's pipes, handles, the Lua
 * binding, the codec's by-reference crossing and pt.select's hooks; the
 * pipe itself and its other files are described in pipe.h. */
#include "pipe.h"
#include "handle.h"
#include "wait.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PIPE_MT "procthread.Pipe"

typedef struct handle {
  pt_pipe *p;                 /* NULL once closed */
  pid_t pid;                  /* process that holds this handle's count */
} handle;

/* ---- the registry of this process's pipes ------------------------------- */

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pt_pipe *reg_head;
static uint32_t reg_counter;

static pt_pipe *reg_find(uint64_t id) {
  pt_pipe *p;
  for (p = reg_head; p; p = p->next)
    if (p->id == id) return p;
  return NULL;
}


static void pipe_destroy(pt_pipe *p) {
  int rfd = p->rfd;
  p->rfd = -1;
  pt_pipe_finish_read_close(p, rfd);
  pt_pipe_close_fd(&p->wfd);
  pt_pipe_close_fd(&p->close_ev);
  pt_buf_free(&p->park);
  munmap(p->shm, sizeof *p->shm);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

/* Drop one count; the last one destroys the pipe (in this process). */
static void pipe_unref(pt_pipe *p) {
  long left;
  pthread_mutex_lock(&reg_mu);
  pthread_mutex_lock(&p->mu);
  left = --p->refs;
  pthread_mutex_unlock(&p->mu);
  if (left == 0) {
    if (p->prev) p->prev->next = p->next; else reg_head = p->next;
    if (p->next) p->next->prev = p->prev;
  }
  pthread_mutex_unlock(&reg_mu);
  if (left == 0) pipe_destroy(p);
}

/* In a new child: the other threads of the parent are gone, with any lock
   they held and any call they were making. */
PT_AFTER_FORK static void pipe_after_fork(void) {
  pt_pipe *p;
  pt_mutex_reset(&reg_mu);
  for (p = reg_head; p; p = p->next) {
    pt_mutex_reset(&p->mu);
    p->rbusy = p->wbusy = 0;
    if (p->rclosing) { pt_pipe_close_fd(&p->rfd); p->rclosing = 0; }
    if (p->wclosing) { pt_pipe_close_fd(&p->wfd); p->wclosing = 0; }
  }
}

/* ---- handles -------------------------------------------------------------- */

/* The toolkit's key for pipes (handle.h): their codec type. */
#define PIPE_KEY ((const void *)&pt_xtype_pipe)

/* Not yet released (closed or collected). */
static int handle_live(const void *v) { return ((const handle *)v)->p != NULL; }

static handle *push_handle(lua_State *L, pt_pipe *p) {
  handle *h = (handle *)pt_newuserdata(L, sizeof *h);
  h->p = p;
  h->pid = getpid();
  luaL_getmetatable(L, PIPE_MT);
  lua_setmetatable(L, -2);
  return h;
}

/* The pipe handle at i, or NULL (test) / raise (check); fast from the
   pipe's methods and metamethods. */
static handle *test_handle(lua_State *L, int i) {
  return (handle *)pt_udata_test(L, i, PIPE_KEY, PIPE_MT);
}

static handle *check_handle(lua_State *L, int i) {
  return (handle *)pt_udata_check(L, i, PIPE_KEY, PIPE_MT);
}

static int l_pipe(lua_State *L) {
  int fds[2], err;
  pt_pipe *p;
  pipe_shm *s;
  const char *op;
  if (pipe2(fds, O_CLOEXEC) != 0) return pt_push_oserror(L, "pipe", errno);
  s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (s == MAP_FAILED) { op = "mmap"; err = errno; goto fail2; }
  if (pt_lock_init(&s->wlock, 0) != 0 || pt_lock_init(&s->rlock, 0) != 0) {
    op = "pthread_mutex_init"; err = errno; goto fail1;
  }
  s->capacity = fcntl(fds[1], F_GETPIPE_SZ);
  p = calloc(1, sizeof *p);
  if (!p) { op = "pipe"; err = ENOMEM; goto fail1; }
  pthread_mutex_init(&p->mu, NULL);
  p->refs = 1;
  p->rfd = fds[0];
  p->wfd = fds[1];
  p->close_ev = -1;
  p->shm = s;
  p->born = getpid();
  p->forks = pt_pipe_forks();
  pt_buf_init(&p->park);
  pthread_mutex_lock(&reg_mu);
  p->id = (uint64_t)(uint32_t)getpid() << 32 | ++reg_counter;
  p->next = reg_head;
  if (reg_head) reg_head->prev = p;
  reg_head = p;
  pthread_mutex_unlock(&reg_mu);
  push_handle(L, p);
  return 1;
fail1:
  munmap(s, sizeof *s);
fail2:
  pt_close(fds[0]);
  pt_close(fds[1]);
  return pt_push_oserror(L, op, err);
}

/* The handle's release, serving close and __close (ends: both ends are
   closed in this process first) and __gc (the pipe's count only): safe to
   call again.  The count is dropped only in the process that holds it. */
static int handle_release(lua_State *L, int ends) {
  handle *h = check_handle(L, 1);
  pt_pipe *p = h->p;
  if (!p) return 0;
  if (ends) {
    pt_pipe_end_close(p, 1);
    pt_pipe_end_close(p, 0);
  }
  h->p = NULL;
  if (h->pid == getpid()) pipe_unref(p);
  return 0;
}

static int l_close(lua_State *L) { return handle_release(L, 1); }

static int l_gc(lua_State *L) { return handle_release(L, 0); }

static int l_close_read(lua_State *L) {
  handle *h = check_handle(L, 1);
  if (h->p) pt_pipe_end_close(h->p, 1);
  return 0;
}

static int l_close_write(lua_State *L) {
  handle *h = check_handle(L, 1);
  if (h->p) pt_pipe_end_close(h->p, 0);
  return 0;
}

static int l_fds(lua_State *L) {
  handle *h = check_handle(L, 1);
  int r = -1, w = -1;
  if (h->p) {
    pt_pipe_exact(h->p);        /* the read fd is polled: no read-ahead */
    pthread_mutex_lock(&h->p->mu);
    if (!h->p->rclosing) r = h->p->rfd;
    if (!h->p->wclosing) w = h->p->wfd;
    pthread_mutex_unlock(&h->p->mu);
  }
  if (r >= 0) lua_pushinteger(L, r); else lua_pushnil(L);
  if (w >= 0) lua_pushinteger(L, w); else lua_pushnil(L);
  return 2;
}

static int l_tostring(lua_State *L) {
  handle *h = check_handle(L, 1);
  if (h->p) lua_pushfstring(L, "procthread.Pipe (%p)", (void *)h->p);
  else lua_pushliteral(L, "procthread.Pipe (closed)");
  return 1;
}

/* Two handles of one open pipe are equal (as two of one channel are),
   whichever way they came: decoded from a message, returned by a worker.
   Lua 5.3 and 5.4 call it with another userdata on either side
   (io.stdout == p): false; a direct call with no pipe at all raises. */
static int l_eq(lua_State *L) {
  handle *a = test_handle(L, 1), *b = test_handle(L, 2);
  if (!a && !b) check_handle(L, 1);
  lua_pushboolean(L, a && b && a->p && a->p == b->p);
  return 1;
}

static int push_closed(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "closed");
  return 2;
}

/* ---- per-thread buffers --------------------------------------------------- */

/* One encode buffer and one receive buffer per thread, reused from call to
   call (a malloc and its growth per message cost more than the write);
   freed when the thread ends, or after a call that made them large. */
#define KEEP_BUF (256 * 1024)
typedef struct tls_bufs { pt_buf send, recv; } tls_bufs;
static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void tls_free(void *v) {
  tls_bufs *t = (tls_bufs *)v;
  pt_buf_free(&t->send);
  pt_buf_free(&t->recv);
  free(t);
}

static void tls_init(void) { (void)pthread_key_create(&tls_key, tls_free); }

static tls_bufs *tls_get(void) {
  tls_bufs *t;
  pthread_once(&tls_once, tls_init);
  t = (tls_bufs *)pthread_getspecific(tls_key);
  if (!t && (t = calloc(1, sizeof *t)) != NULL) {
    if (pthread_setspecific(tls_key, t) != 0) { free(t); t = NULL; }
  }
  return t;
}

/* Take the thread's buffer (a nested call, say from a module the decoder
   loads, then finds none and makes its own) and give it back after. */
static pt_buf buf_take(tls_bufs *t, int recv) {
  pt_buf b;
  pt_buf_init(&b);
  if (t) {
    pt_buf *slot = recv ? &t->recv : &t->send;
    b = *slot;
    pt_buf_init(slot);
    b.len = 0;
  }
  return b;
}

static void buf_give(tls_bufs *t, int recv, pt_buf *b) {
  pt_buf *slot = t ? (recv ? &t->recv : &t->send) : NULL;
  if (slot && !slot->data && b->cap <= KEEP_BUF) {
    *slot = *b;
    slot->len = 0;
  } else {
    pt_buf_free(b);
  }
}

/* A message of one string that goes as one frame of more than a page
   (pipe_write.c's write_whole): the codec's bytes before it
   (pt_encode_string_head) into b, and the string's own bytes stay where
   they are, for the write's second part (no copy of them into the
   buffer).  1 done, 0 not such a message (b as it was). */
typedef char pt_head_fits[PT_FRAME_HDR >= PT_STRING_HEAD ? 1 : -1];  /* l_send's reserve */

static int string_head(lua_State *L, pt_buf *b, const char **tail, size_t *tlen) {
  size_t n, len;
  char *p;
  if (lua_gettop(L) != 2 || lua_type(L, 2) != LUA_TSTRING) return 0;
  n = (size_t)pt_rawlen(L, 2);            /* a short message spends no more */
  if (n + 1 < PT_FRAME_MAXDATA || n > PT_FRAME_ONEMAX) return 0;
  *tail = lua_tostring(L, 2);
  p = b->data + b->len;                   /* reserved: 16 bytes past the header */
  p += pt_encode_string_head(p, n);
  len = (size_t)(p - b->data) - PT_FRAME_HDR + n;
  if (len <= PT_FRAME_MAXDATA || len > PT_FRAME_ONEMAX) return 0;
  b->len = (size_t)(p - b->data);
  *tlen = n;
  return 1;
}

static int l_send(lua_State *L) {
  handle *h = check_handle(L, 1);
  pt_pipe *p = h->p;
  tls_bufs *t;
  pt_buf buf, *b = &buf;
  char err[PT_ERRLEN];
  const char *tail = NULL;
  size_t len, tlen = 0;
  int r, saved;
  if (!p) return push_closed(L);
  t = tls_get();
  buf = buf_take(t, 0);
  if (pt_buf_reserve(b, 2 * PT_FRAME_HDR)) { buf_give(t, 0, b); return luaL_error(L, "send: not enough memory"); }
  b->len = PT_FRAME_HDR;                  /* room for the first header */
  if (!string_head(L, b, &tail, &tlen) &&
      !pt_encode(L, 2, lua_gettop(L) - 1, "message", b, err, sizeof err)) {
    buf_give(t, 0, b);
    return luaL_error(L, "send: %s", err);
  }
  len = b->len - PT_FRAME_HDR + tlen;
  if (len > PT_MSG_MAX) {
    pt_discard(b->data + PT_FRAME_HDR, len);
    buf_give(t, 0, b);
    return luaL_error(L, "message too large (%d bytes; the limit is %d MiB)",
                      (int)(len > 0x7fffffff ? 0x7fffffff : len), (int)(PT_MSG_MAX >> 20));
  }
  r = pt_pipe_write(p, b, tail, tlen);
  saved = errno;
  if (r != WR_OK) {
    /* nobody will decode this message: drop the references it holds (a
       string holds none) */
    if (!tail) pt_discard(b->data + PT_FRAME_HDR, len);
    buf_give(t, 0, b);
    if (r == WR_CLOSED) return push_closed(L);
    if (r == WR_CANCEL) return pt_raise_cancelled(L);
    return pt_push_oserror(L, r == WR_LOCK ? "pipe lock" : "write", saved);
  }
  buf_give(t, 0, b);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_recv(lua_State *L) {
  handle *h = check_handle(L, 1);
  double deadline = pt_check_deadline(L, 2, 1, "recv");
  pt_pipe *p = h->p;
  pipe_shm *s;
  pt_buf out;
  tls_bufs *t;
  int fd, lk, r, saved, n;
  if (!p) return push_closed(L);
  fd = pt_pipe_end_begin(p, 1);
  if (fd < 0) return push_closed(L);
  s = p->shm;
  lk = pt_pipe_lock(&s->rlock, deadline);
  if (lk < 0) {
    saved = errno;
    pt_pipe_end_done(p, 1);
    if (lk == LK_CANCEL) return pt_raise_cancelled(L);
    if (lk == LK_TIMEOUT) { lua_pushnil(L); lua_pushliteral(L, "timeout"); return 2; }
    return pt_push_oserror(L, "pipe lock", saved);
  }
  if (lk == LK_DIED) {          /* a reader died mid-message: skip, say lost */
    s->resync = 1;
    s->orphan = 0;
  }
  t = tls_get();
  out = buf_take(t, 1);
  r = pt_pipe_take(p, fd, deadline, &out, 1);
  saved = errno;
  pthread_mutex_unlock(&s->rlock);
  pt_pipe_end_done(p, 1);
  switch (r) {
    case R_MSG: break;
    case R_CLOSED: buf_give(t, 1, &out); return push_closed(L);
    case R_TIMEOUT:
      buf_give(t, 1, &out);
      lua_pushnil(L); lua_pushliteral(L, "timeout");
      return 2;
    case R_LOST:
      buf_give(t, 1, &out);
      lua_pushnil(L); lua_pushliteral(L, "lost message");
      return 2;
    case R_CORRUPT:
      buf_give(t, 1, &out);
      return luaL_error(L, "corrupt message");
    case R_CANCEL: buf_give(t, 1, &out); return pt_raise_cancelled(L);
    case R_NOMEM: buf_give(t, 1, &out); return luaL_error(L, "not enough memory");
    default: buf_give(t, 1, &out); return pt_push_oserror(L, "read", saved);
  }
  lua_settop(L, 1);
  n = pt_decode(L, out.data ? out.data : "", out.len);
  buf_give(t, 1, &out);
  if (n < 0) return lua_error(L);
  return n;
}

/* ---- for pt.select (select.c) ---------------------------------------------- */

int pt_pipe_get(lua_State *L, int idx, void **pipe) {
  handle *h = test_handle(L, idx);
  *pipe = h ? h->p : NULL;
  return h != NULL;
}

int pt_pipe_watch(void *pipe) { return pt_pipe_end_begin((pt_pipe *)pipe, 1); }

void pt_pipe_unwatch(void *pipe) { pt_pipe_end_done((pt_pipe *)pipe, 1); }

int pt_pipe_buffered(void *pipe) {
  pipe_shm *s = ((pt_pipe *)pipe)->shm;
  return __atomic_load_n(&s->rend, __ATOMIC_ACQUIRE) != __atomic_load_n(&s->rstart, __ATOMIC_ACQUIRE);
}

/* ---- crossing the codec: by reference ---------------------------------------- */

static const char *pipe_encode(lua_State *L, int idx, pt_ref *ref) {
  handle *h = test_handle(L, idx);
  pt_pipe *p = h ? h->p : NULL;
  if (!p) return "cannot send a closed pipe";
  pthread_mutex_lock(&p->mu);
  p->refs++;
  p->inflight++;
  pthread_mutex_unlock(&p->mu);
  ref->a = p->id;
  ref->b = (uint64_t)(uintptr_t)p->shm;
  return NULL;
}

/* Find the pipe of a reference and, when it is a reference in flight of
   this process, drop that count (release) or hand it to a new handle
   (decode).  Other processes' references carry no count here: they only
   name a pipe this process may hold. */
static pt_pipe *ref_lookup(const pt_ref *ref) {
  pt_pipe *p = reg_find(ref->a);
  if (p && (uint64_t)(uintptr_t)p->shm != ref->b) p = NULL;
  return p;
}

static void pipe_release(const pt_ref *ref) {
  pt_pipe *p;
  int drop = 0;
  pthread_mutex_lock(&reg_mu);
  p = ref_lookup(ref);
  if (p) {
    pthread_mutex_lock(&p->mu);
    if (p->inflight > 0) { p->inflight--; drop = 1; }
    pthread_mutex_unlock(&p->mu);
  }
  pthread_mutex_unlock(&reg_mu);
  if (drop) pipe_unref(p);
}

static const char *pipe_decode(lua_State *L, const pt_ref *ref) {
  pt_pipe *p;
  pthread_mutex_lock(&reg_mu);
  p = ref_lookup(ref);
  if (p) {
    int open;
    pthread_mutex_lock(&p->mu);
    open = p->rfd >= 0 || p->wfd >= 0;
    if (open) {
      if (p->inflight > 0) p->inflight--;     /* adopt the message's count */
      else p->refs++;
    }
    pthread_mutex_unlock(&p->mu);
    if (!open) p = NULL;
  }
  pthread_mutex_unlock(&reg_mu);
  if (!p) return "pipe is not open in this process";
  push_handle(L, p);
  return NULL;
}

const pt_xtype pt_xtype_pipe = {PIPE_MT, pipe_encode, pipe_release, pipe_decode};

/* ---- registration ------------------------------------------------------------- */

void pt_open_pipe(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"send", l_send}, {"recv", l_recv}, {"close", l_close},
    {"close_write", l_close_write}, {"close_read", l_close_read},
    {"fds", l_fds}, {NULL, NULL}};
  /* __close on every Lua, as before (only 5.4 calls it) */
  static const luaL_Reg meta[] = {
    {"__gc", l_gc}, {"__close", l_close}, {"__eq", l_eq}, {"__tostring", l_tostring},
    {NULL, NULL}};
  static const luaL_Reg fns[] = {{"pipe", l_pipe}, {NULL, NULL}};
  pt_atfork_child(pipe_after_fork);
  pt_pipe_watch_forks();
  pt_meta_open(L, PIPE_MT, PIPE_KEY, handle_live, meta, methods);
  pt_setfuncs(L, fns);
}
