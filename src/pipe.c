/* pipe.c - message pipes: pt.pipe(), p:send/recv/close... (pt.select: select.c).
 *
 * A pipe is an OS pipe plus a small shared mapping (MAP_SHARED, inherited
 * by forked children) that holds two robust process-shared locks and the
 * read-ahead buffer:
 *
 *  - the write lock is held for a whole message, so the chunks of
 *    concurrent senders (threads and processes) never interleave.  Every
 *    chunk is one write() of at most PIPE_BUF bytes, which the OS makes
 *    atomic, so a sender killed mid-message leaves whole chunks only: the
 *    next locker gets EOWNERDEAD and writes an abort chunk, and the reader
 *    drops the torn message and says "lost message".
 *  - the read lock is held while a reader takes one message out of the
 *    shared buffer (reading more from the OS pipe as needed), so readers in
 *    several threads and processes each get whole messages.
 *
 * In each process, a pipe is one malloc'd pt_pipe shared by the threads
 * (reference counted: Lua handles plus references in flight inside encoded
 * messages), listed in a per-process registry by a unique id so that a
 * pipe can cross the codec.  A forked child inherits the registry and the
 * handles by copy-on-write, without counts: a handle only drops its count
 * in the process that made it.
 *
 * SIGPIPE: the sender blocks it in its own thread around its writes and
 * consumes the one its EPIPE raised; the disposition is never changed. */
#include "pt.h"
#include "frame.h"
#include "wait.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define PIPE_MT "procthread.Pipe"
#define RBUF_SIZE (64 * 1024)
#define CLOSE_SLICE 0.05       /* without an eventfd (EMFILE): see wait_room */
#define STALL_CHECK 0.1        /* mid-message wait before checking the writer */

typedef struct pipe_shm {
  pthread_mutex_t wlock;      /* held by a sender for a whole message */
  pthread_mutex_t rlock;      /* held by a receiver for a whole message */
  uint32_t rstart, rend;      /* unread bytes of rbuf (under rlock) */
  int wtorn;                  /* a sender stopped mid-message (under wlock) */
  int resync;                 /* skip to the next valid header (under rlock) */
  int orphan;                 /* the rest of a message a reader left is being
                                 skipped and was reported lost */
  int capacity;               /* the OS pipe's size in bytes */
  uint64_t parked;            /* a reader that timed out mid-message keeps
                                 the part it took (see park); its id, or 0
                                 (under rlock) */
  char rbuf[RBUF_SIZE];
} pipe_shm;

typedef struct pt_pipe {
  pthread_mutex_t mu;         /* the fields below */
  long refs;                  /* handles + in-flight references */
  long inflight;              /* references held by encoded messages */
  int rfd, wfd;               /* -1 once closed in this process */
  int rbusy, wbusy;           /* calls using rfd / wfd right now */
  int rclosing, wclosing;     /* close asked while busy: the last call closes */
  int close_ev;               /* eventfd written when rclosing is set (a
                                 sender holding the read end waits on it),
                                 made on first need, or -1 */
  uint64_t id;
  pid_t born;                 /* the process that made the pipe */
  unsigned forks;             /* fork_count when it was made */
  pt_buf park;                /* the part of a message a recv of this process
                                 took before it timed out (under rlock) */
  uint32_t park_total;        /* that message's length */
  uint64_t park_id;           /* the id it was parked under */
  pipe_shm *shm;
  struct pt_pipe *prev, *next; /* the registry */
} pt_pipe;

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

static void close_fd_now(int *fd) {
  if (*fd >= 0) { pt_close(*fd); *fd = -1; }
}

/* Forks this process made (pthread_atfork): a pipe made before one may
   have a reader in the child. */
static unsigned fork_count;
static void count_fork(void) { __atomic_add_fetch(&fork_count, 1, __ATOMIC_RELAXED); }

/* Does this process hold the only read end?  It made the pipe and has not
   forked since (a pipe only reaches another process through fork). */
static int sole_reader(const pt_pipe *p) {
  return p->born == getpid() &&
         p->forks == __atomic_load_n(&fork_count, __ATOMIC_RELAXED);
}

static void drain(pt_pipe *p, int fd);

/* The read end is closing for good in this process (fd: taken out of p,
   no call uses it): when nobody else can read the pipe, the messages left
   in it are dropped with the references they hold.  Never under p->mu:
   dropping a reference may take it. */
static void finish_read_close(pt_pipe *p, int fd) {
  if (fd < 0) return;
  if (sole_reader(p)) drain(p, fd);
  pt_close(fd);
}

static void pipe_destroy(pt_pipe *p) {
  int rfd = p->rfd;
  p->rfd = -1;
  finish_read_close(p, rfd);
  close_fd_now(&p->wfd);
  close_fd_now(&p->close_ev);
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
static void pipe_after_fork(void) {
  pt_pipe *p;
  pthread_mutex_init(&reg_mu, NULL);
  for (p = reg_head; p; p = p->next) {
    pthread_mutex_init(&p->mu, NULL);
    p->rbusy = p->wbusy = 0;
    if (p->rclosing) { close_fd_now(&p->rfd); p->rclosing = 0; }
    if (p->wclosing) { close_fd_now(&p->wfd); p->wclosing = 0; }
  }
}

/* ---- robust shared locks ------------------------------------------------- */

static int init_robust(pthread_mutex_t *m) {
  pthread_mutexattr_t a;
  int r = pthread_mutexattr_init(&a);
  if (r) return r;
  r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (!r) r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  if (!r) r = pthread_mutex_init(m, &a);
  pthread_mutexattr_destroy(&a);
  return r;
}

enum { LK_OK = 0, LK_DIED = 1, LK_ERR = -1, LK_CANCEL = -2, LK_TIMEOUT = -3 };

/* Take m before deadline (<0: none), staying cancellable and (main
   thread) interruptible while it waits: a futex wait on the lock's word
   next to the cancel flag and the interrupt word (wait.c), no timer.
   LK_DIED: taken, and the previous holder died with it (now consistent
   again).  LK_CANCEL: cancelled, or interrupted (pt_raise_cancelled). */
static int lock_robust(pthread_mutex_t *m, double deadline) {
  pt_ctx *c = pt_self_ctx;
  uint32_t iv = 0;
  const uint32_t *iw;
  int r = pthread_mutex_trylock(m);
  if (r == 0) return LK_OK;                  /* the common case: no wait */
  if (r == EOWNERDEAD) { pthread_mutex_consistent(m); return LK_DIED; }
  if (pt_interrupted()) return LK_CANCEL;
  iw = pt_interrupt_word(&iv);
  switch (pt_lock_wait(m, deadline, c ? c->cancel : NULL, iw, iv)) {
    case PT_OK: return LK_OK;
    case PT_OWNERDEAD: return LK_DIED;
    case PT_TIMEOUT: return LK_TIMEOUT;
    case PT_CANCELLED: return LK_CANCEL;
    case PT_INTR: pt_interrupted(); return LK_CANCEL;
    default: return LK_ERR;
  }
}

/* ---- using an end: close() waits for the calls in progress -------------- */

/* Under p->mu: the read end is no longer used; if its close was asked,
   take its fd out for finish_read_close.  Returns that fd or -1. */
static int read_end_idle(pt_pipe *p) {
  int fd = -1;
  if (p->rbusy == 0 && p->rclosing) {
    fd = p->rfd; p->rfd = -1; p->rclosing = 0;
    close_fd_now(&p->close_ev);       /* no sender holds the read end now */
  }
  return fd;
}

/* Start a call on the read (r=1) or write end; -1 when that end is closed. */
static int end_begin(pt_pipe *p, int r) {
  int fd;
  pthread_mutex_lock(&p->mu);
  fd = r ? (p->rclosing ? -1 : p->rfd) : (p->wclosing ? -1 : p->wfd);
  if (fd >= 0) { if (r) p->rbusy++; else p->wbusy++; }
  pthread_mutex_unlock(&p->mu);
  return fd;
}

static void end_done(pt_pipe *p, int r) {
  int rfd = -1;
  pthread_mutex_lock(&p->mu);
  if (r) {
    p->rbusy--;
    rfd = read_end_idle(p);
  } else {
    if (--p->wbusy == 0 && p->wclosing) { close_fd_now(&p->wfd); p->wclosing = 0; }
  }
  pthread_mutex_unlock(&p->mu);
  finish_read_close(p, rfd);
}

/* A send uses the write end, and the read end too when this process holds
   it (see l_send): both under one lock.  *reader: 1 when it does. */
static int send_begin(pt_pipe *p, int *reader) {
  int fd;
  pthread_mutex_lock(&p->mu);
  fd = p->wclosing ? -1 : p->wfd;
  *reader = 0;
  if (fd >= 0) {
    p->wbusy++;
    if (p->rfd >= 0 && !p->rclosing) { p->rbusy++; *reader = 1; }
  }
  pthread_mutex_unlock(&p->mu);
  return fd;
}

static void send_done(pt_pipe *p, int reader) {
  if (reader) end_done(p, 1);
  end_done(p, 0);
}

/* Close one end; while calls use it, the last of them closes it.  A
   sender that keeps the read end busy (l_send) lets it go when it sees
   rclosing, so that a close_read here wakes it as it would in another
   process. */
static void end_close(pt_pipe *p, int r) {
  int rfd = -1;
  pthread_mutex_lock(&p->mu);
  if (r) {
    if (p->rfd >= 0) p->rclosing = 1;
    if (p->rclosing && p->close_ev >= 0) {        /* wake a sender holding it */
      uint64_t one = 1;
      if (write(p->close_ev, &one, sizeof one) < 0) { /* it is readable already */ }
    }
    rfd = read_end_idle(p);
  } else {
    if (p->wbusy) p->wclosing = p->wfd >= 0; else close_fd_now(&p->wfd);
  }
  pthread_mutex_unlock(&p->mu);
  finish_read_close(p, rfd);
}

/* For a sender holding the read end busy: -2 when a close of it has been
   asked, else the eventfd end_close writes when one is (made here on
   first need), or -1 when none can be made. */
static int close_event(pt_pipe *p) {
  int fd;
  pthread_mutex_lock(&p->mu);
  if (!p->rclosing && p->close_ev < 0) p->close_ev = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  fd = p->rclosing ? -2 : p->close_ev;
  pthread_mutex_unlock(&p->mu);
  return fd;
}

/* ---- handles -------------------------------------------------------------- */

static handle *push_handle(lua_State *L, pt_pipe *p) {
  handle *h = (handle *)pt_newuserdata(L, sizeof *h);
  h->p = p;
  h->pid = getpid();
  luaL_getmetatable(L, PIPE_MT);
  lua_setmetatable(L, -2);
  return h;
}

static handle *check_handle(lua_State *L, int i) {
  return (handle *)luaL_checkudata(L, i, PIPE_MT);
}

/* Forget a handle's pipe; its count only if the count is ours. */
static void handle_drop(handle *h) {
  pt_pipe *p = h->p;
  if (!p) return;
  h->p = NULL;
  if (h->pid == getpid()) pipe_unref(p);
}

static int l_pipe(lua_State *L) {
  int fds[2], r, err;
  pt_pipe *p;
  pipe_shm *s;
  const char *op;
  if (pipe2(fds, O_CLOEXEC) != 0) return pt_push_oserror(L, "pipe", errno);
  s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (s == MAP_FAILED) { op = "mmap"; err = errno; goto fail2; }
  if ((r = init_robust(&s->wlock)) != 0 || (r = init_robust(&s->rlock)) != 0) {
    op = "pthread_mutex_init"; err = r; goto fail1;
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
  p->forks = __atomic_load_n(&fork_count, __ATOMIC_RELAXED);
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

/* close, __gc, __close: safe to call twice. */
static int l_close(lua_State *L) {
  handle *h = check_handle(L, 1);
  if (h->p) {
    end_close(h->p, 1);
    end_close(h->p, 0);
    handle_drop(h);
  }
  return 0;
}

static int l_gc(lua_State *L) {
  handle *h = check_handle(L, 1);
  handle_drop(h);
  return 0;
}

static int l_close_read(lua_State *L) {
  handle *h = check_handle(L, 1);
  if (h->p) end_close(h->p, 1);
  return 0;
}

static int l_close_write(lua_State *L) {
  handle *h = check_handle(L, 1);
  if (h->p) end_close(h->p, 0);
  return 0;
}

static int l_fds(lua_State *L) {
  handle *h = check_handle(L, 1);
  int r = -1, w = -1;
  if (h->p) {
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

/* ---- send ------------------------------------------------------------------ */

enum { WR_OK = 0, WR_CLOSED = 1, WR_ERR = -1, WR_CANCEL = -2 };

/* A send in progress: its pipe and write fd, whether it keeps the read
   end of this process busy (then the pipe has a reader: no EPIPE, no
   SIGPIPE), and else the SIGPIPE mask it set. */
typedef struct sender {
  pt_pipe *p;
  int fd;
  int reader;
  int masked, blocked, was_pending;
  sigset_t old;
} sender;

/* Block SIGPIPE in this thread for the writes (see the top of the file). */
static void sigpipe_guard(sender *sd) {
  sigset_t pipeset, pending;
  sigemptyset(&pipeset);
  sigaddset(&pipeset, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipeset, &sd->old);
  sd->masked = 1;
  sd->blocked = sigismember(&sd->old, SIGPIPE);
  /* blocked already (worker threads start with signals blocked): note
     whether one is pending, which would not be ours to take */
  sd->was_pending = 0;
  if (sd->blocked && sigpending(&pending) == 0) sd->was_pending = sigismember(&pending, SIGPIPE);
}

static void sigpipe_unguard(sender *sd, int r) {
  sigset_t pipeset;
  if (!sd->masked) return;
  sigemptyset(&pipeset);
  sigaddset(&pipeset, SIGPIPE);
  if (r == WR_CLOSED && !sd->was_pending) {
    /* consume the SIGPIPE our write raised (thread-directed, pending now) */
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipeset, NULL, &zero) < 0 && errno == EINTR) {}
  }
  if (!sd->blocked) pthread_sigmask(SIG_SETMASK, &sd->old, NULL);
  sd->masked = 0;
}

/* Wait for room.  A sender keeping the read end busy also waits for a
   close of that end asked by another thread (an eventfd end_close writes):
   it lets the end go (and the close happens), guards against SIGPIPE and
   goes on as any other sender, which the OS answers with EPIPE when no
   reader is left.  1 room, or WR_*. */
static int wait_room(sender *sd) {
  for (;;) {
    struct pollfd p[3];
    int n = 0, ev = -1, r;
    p[n].fd = sd->fd; p[n++].events = POLLOUT;
    if (sd->reader && (ev = close_event(sd->p)) >= 0) { p[n].fd = ev; p[n++].events = POLLIN; }
    if (ev == -2) {
      sd->reader = 0;
      sigpipe_guard(sd);
      end_done(sd->p, 1);
      continue;
    }
    r = pt_poll_wait(p, n, sd->reader && ev < 0 ? pt_now() + CLOSE_SLICE : -1);
    if (r == -2) return WR_CANCEL;
    if (r == -1) return WR_ERR;
    if (r == 0) return 1;
  }
}

/* One chunk: one write() of at most PIPE_BUF bytes (atomic).  With a
   cancellation context, or while the read end is held, wait for room
   first so the thread stays cancellable (and see wait_room); a blocking
   write would not be. */
static int write_chunk(sender *sd, const char *chunk, size_t len) {
  ssize_t n;
  pt_ctx *c = pt_self_ctx;
  int fd = sd->fd;
  for (;;) {
    if ((c && c->cancel_fd >= 0) || sd->reader) {
      int r = wait_room(sd);
      if (r != 1) return r;
    }
    n = write(fd, chunk, len);
    if (n == (ssize_t)len) return WR_OK;
    if (n >= 0) { errno = EIO; return WR_ERR; }     /* cannot happen: atomic */
    if (errno == EINTR && pt_interrupted()) return WR_CANCEL;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {                          /* made non-blocking elsewhere */
      int r = wait_room(sd);
      if (r != 1) return r;
      continue;
    }
    if (errno == EPIPE) return WR_CLOSED;
    return WR_ERR;
  }
}

/* The message is buf[16 .. 16+len): buf[0..16) is room for the first
   header.  Each later chunk borrows the 16 bytes before its data (already
   written) for its header and gives them back, so every chunk is one
   contiguous write and the message stays intact for pt_discard. */
/* Several chunks in one writev, when the pipe is nearly empty and they
   fill at most half of it: the write cannot block, so it cannot be cut by a kill
   mid-chunk, and the reader is woken once instead of once a chunk.  (A
   short count can only come from an error we live through: the rest is
   then written chunk by chunk below, still under the lock.)  Returns the
   bytes of the message written, or -1. */
#define BATCH_MAX 8
static long write_batch(pipe_shm *s, int fd, char *buf, size_t len,
                        unsigned char (*hdrs)[PT_FRAME_HDR]) {
  struct iovec iov[2 * BATCH_MAX];
  size_t off = 0, total = 0, room;
  int n = 0, k = 0, avail = 0;
  ssize_t w;
  if (s->capacity < 4 * PT_FRAME_CHUNK || ioctl(fd, FIONREAD, &avail) != 0 || avail < 0 ||
      (size_t)avail > (size_t)s->capacity / 8)
    return 0;
  /* What the pipe holds may sit in up to twice as many page slots as its
     bytes need (a short write after a full page takes a slot of its own);
     counted so, it and the batch stay within half the pipe, so the write
     still cannot block. */
  room = (size_t)s->capacity / 2 - 2 * (size_t)avail;
  while (off < len && k < BATCH_MAX && total + PT_FRAME_CHUNK <= room) {
    size_t c = len - off > PT_FRAME_MAXDATA ? PT_FRAME_MAXDATA : len - off;
    int flags = (off == 0 ? PT_FRAME_FIRST : 0) | (off + c == len ? PT_FRAME_LAST : 0);
    pt_frame_put(hdrs[k], PT_FRAME_DATA, flags, (uint32_t)c,
                 off == 0 ? (uint32_t)len : (uint32_t)off);
    iov[n].iov_base = hdrs[k]; iov[n++].iov_len = PT_FRAME_HDR;
    iov[n].iov_base = buf + PT_FRAME_HDR + off; iov[n++].iov_len = c;
    off += c; total += PT_FRAME_HDR + c; k++;
  }
  if (k < 2) return 0;                        /* one chunk: the plain path */
  do w = writev(fd, iov, n); while (w < 0 && errno == EINTR);
  if (w < 0) return errno == EAGAIN ? 0 : -1;
  if ((size_t)w == total) return (long)off;
  /* cut short: back up to the start of the chunk it stopped in, and finish
     that chunk from the byte it stopped at */
  {
    size_t done = (size_t)w, at = 0, moff = 0;
    int i;
    for (i = 0; i < k; i++) {
      size_t c = iov[2 * i + 1].iov_len, whole = PT_FRAME_HDR + c;
      if (done < at + whole) {
        size_t in = done - at;                /* bytes of this chunk written */
        while (in < whole) {
          const char *src = in < PT_FRAME_HDR ? (const char *)hdrs[i] + in
                                              : buf + PT_FRAME_HDR + moff + (in - PT_FRAME_HDR);
          size_t want = in < PT_FRAME_HDR ? PT_FRAME_HDR - in : whole - in;
          ssize_t r = write(fd, src, want);
          if (r < 0) { if (errno == EINTR) continue; return -1; }
          in += (size_t)r;
        }
        return (long)(moff + c);
      }
      at += whole;
      moff += c;
    }
    return (long)off;
  }
}

/* The message is buf[16 .. 16+len): buf[0..16) is room for the first
   header.  Each later chunk borrows the 16 bytes before its data (already
   written) for its header and gives them back, so every chunk is one
   contiguous write and the message stays intact for pt_discard. */
static int write_message(pipe_shm *s, sender *sd, char *buf, size_t len,
                         int torn_before) {
  unsigned char hdr[PT_FRAME_HDR];
  unsigned char hdrs[BATCH_MAX][PT_FRAME_HDR];
  size_t off = 0;
  int r;
  if (torn_before || s->wtorn) {
    pt_frame_put(hdr, PT_FRAME_ABORT, 0, 0, 0);
    s->wtorn = 1;
    if ((r = write_chunk(sd, (const char *)hdr, PT_FRAME_HDR)) != WR_OK) return r;
    s->wtorn = 0;
  }
  if (len > PT_FRAME_MAXDATA) {
    long done = write_batch(s, sd->fd, buf, len, hdrs);
    if (done < 0) {
      if (errno == EPIPE) return WR_CLOSED;
      return WR_ERR;
    }
    off = (size_t)done;
    if (off == len) return WR_OK;
  }
  do {
    size_t n = len - off > PT_FRAME_MAXDATA ? PT_FRAME_MAXDATA : len - off;
    int flags = (off == 0 ? PT_FRAME_FIRST : 0) | (off + n == len ? PT_FRAME_LAST : 0);
    char *at = buf + off;                 /* the header goes here */
    memcpy(hdr, at, PT_FRAME_HDR);        /* keep what it covers */
    pt_frame_put((unsigned char *)at, PT_FRAME_DATA, flags, (uint32_t)n,
                 off == 0 ? (uint32_t)len : (uint32_t)off);
    r = write_chunk(sd, at, PT_FRAME_HDR + n);
    memcpy(at, hdr, PT_FRAME_HDR);
    if (r != WR_OK) {
      if (off > 0) s->wtorn = 1;     /* the next sender aborts this message */
      return r;
    }
    off += n;
  } while (off < len);
  return WR_OK;
}

static int l_send(lua_State *L) {
  handle *h = check_handle(L, 1);
  pt_pipe *p = h->p;
  tls_bufs *t;
  pt_buf buf, *b = &buf;
  sender sd;
  char err[640];
  int lk, r, saved = 0;
  size_t len;
  if (!p) return push_closed(L);
  t = tls_get();
  buf = buf_take(t, 0);
  if (pt_buf_reserve(b, PT_FRAME_HDR)) { buf_give(t, 0, b); return luaL_error(L, "not enough memory"); }
  b->len = PT_FRAME_HDR;                  /* room for the first header */
  if (!pt_encode(L, 2, lua_gettop(L) - 1, "message", b, err, sizeof err)) {
    buf_give(t, 0, b);
    return luaL_error(L, "%s", err);
  }
  len = b->len - PT_FRAME_HDR;
  if (len > PT_MSG_MAX) {
    pt_discard(b->data + PT_FRAME_HDR, len);
    buf_give(t, 0, b);
    return luaL_error(L, "message too large (%d bytes; the limit is %d MiB)",
                      (int)(len > 0x7fffffff ? 0x7fffffff : len), (int)(PT_MSG_MAX >> 20));
  }
  memset(&sd, 0, sizeof sd);
  sd.p = p;
  sd.fd = send_begin(p, &sd.reader);
  if (sd.fd < 0) {
    pt_discard(b->data + PT_FRAME_HDR, len);
    buf_give(t, 0, b);
    return push_closed(L);
  }
  lk = lock_robust(&p->shm->wlock, -1);
  if (lk < 0) {
    saved = errno;
    send_done(p, sd.reader);
    pt_discard(b->data + PT_FRAME_HDR, len);
    buf_give(t, 0, b);
    if (lk == LK_CANCEL) return pt_raise_cancelled(L);
    return pt_push_oserror(L, "pipe lock", saved);
  }
  /* While this process holds the read end open (kept open by marking it
     busy), the pipe has a reader: no EPIPE, no SIGPIPE, no mask to set. */
  if (!sd.reader) sigpipe_guard(&sd);
  r = write_message(p->shm, &sd, b->data, len, lk == LK_DIED);
  saved = errno;
  sigpipe_unguard(&sd, r);
  pthread_mutex_unlock(&p->shm->wlock);
  send_done(p, sd.reader);
  if (r != WR_OK) {
    /* nobody will decode this message: drop the references it holds */
    pt_discard(b->data + PT_FRAME_HDR, len);
    buf_give(t, 0, b);
    if (r == WR_CLOSED) return push_closed(L);
    if (r == WR_CANCEL) return pt_raise_cancelled(L);
    return pt_push_oserror(L, "write", saved);
  }
  buf_give(t, 0, b);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- recv ------------------------------------------------------------------ */

enum { R_MSG = 0, R_CLOSED, R_TIMEOUT, R_LOST, R_CORRUPT, R_CANCEL, R_ERR, R_NOMEM };

/* Did the sender of the message being assembled stop for good: die
   holding the write lock, or give up mid-message (cancelled, an error)
   and let the lock go?  Then the rest never comes.  The next sender
   writes an abort chunk first (wtorn), which the reader then skips. */
static int writer_gone(pipe_shm *s) {
  int r = pthread_mutex_trylock(&s->wlock), gone = 0;
  if (r == EOWNERDEAD) {
    pthread_mutex_consistent(&s->wlock);
    s->wtorn = 1;
    gone = 1;
  } else if (r == 0) {
    gone = s->wtorn;
  }
  if (r == 0 || r == EOWNERDEAD) pthread_mutex_unlock(&s->wlock);
  return gone;
}

/* Read more bytes into the shared buffer (rlock held).  Returns >0 bytes
   read, 0 end of stream, or -R_TIMEOUT / -R_CANCEL / -R_ERR / -R_LOST. */
/* Before sleeping on an empty pipe, look again for a few microseconds,
   yielding the CPU to any other task: a sender that is running
   on another CPU then hands its message over without a sleep and a
   wakeup on each side, which cost more than the message itself.  Not on
   one CPU, where only a sleep lets the sender run.  1 data, 0 empty. */
#define SPIN_SECONDS 20e-6
static __thread int spin_cpus;       /* CPUs this thread may run on; 0: not known */

static int spin_for_data(int fd, double deadline) {
  double until;
  if (!spin_cpus) {
    cpu_set_t set;
    spin_cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    if (spin_cpus < 1) spin_cpus = 1;
  }
  if (spin_cpus < 2) return 0;       /* one CPU: the sender cannot run meanwhile */
  until = pt_now() + SPIN_SECONDS;
  if (deadline >= 0 && deadline < until) until = deadline;
  do {
    int avail = 0;
    if (ioctl(fd, FIONREAD, &avail) != 0 || avail > 0) return 1;
    sched_yield();
  } while (pt_now() < until);
  return 0;
}

static long fill(pipe_shm *s, int fd, pt_frame_asm *a, double deadline) {
  pt_ctx *c = pt_self_ctx;
  int waitable = (c && c->cancel_fd >= 0) || pt_interrupt_watched();   /* Ctrl-C */
  ssize_t n;
  int spun = 0;
  if (s->rstart == s->rend) s->rstart = s->rend = 0;
  else if (s->rend > RBUF_SIZE - PT_FRAME_CHUNK) {        /* compact */
    memmove(s->rbuf, s->rbuf + s->rstart, s->rend - s->rstart);
    s->rend -= s->rstart;
    s->rstart = 0;
  }
  for (;;) {
    if (!spun) { spun = 1; if (spin_for_data(fd, deadline)) goto readnow; }
    if (a->active) {
      /* mid-message: the rest follows at the sender's pace, within the
         timeout; but a sender that died or gave up sends nothing more */
      double left = deadline < 0 ? STALL_CHECK : deadline - pt_now();
      int r = pt_wait_fd(fd, POLLIN, left < 0 ? 0 : left > STALL_CHECK ? STALL_CHECK : left);
      if (r == -2) return -R_CANCEL;
      if (r == -1) return -R_ERR;
      if (r == 0) {
        if (writer_gone(s)) return -R_LOST;
        if (deadline >= 0 && pt_now() >= deadline) return -R_TIMEOUT;
        continue;
      }
    } else if (deadline >= 0 || waitable) {
      double left = deadline < 0 ? -1 : deadline - pt_now();
      int r = pt_wait_fd(fd, POLLIN, left < 0 && deadline >= 0 ? 0 : left);
      if (r == -2) return -R_CANCEL;
      if (r == -1) return -R_ERR;
      if (r == 0) return -R_TIMEOUT;
    }
  readnow:
    n = read(fd, s->rbuf + s->rend, RBUF_SIZE - s->rend);
    if (n > 0) { s->rend += (uint32_t)n; return (long)n; }
    if (n == 0) return 0;
    if (errno == EINTR && pt_interrupted()) return -R_CANCEL;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {                  /* made non-blocking elsewhere */
      int r = pt_wait_fd(fd, POLLIN, deadline < 0 ? -1 : deadline - pt_now());
      if (r == -2) return -R_CANCEL;
      if (r == -1) return -R_ERR;
      if (r == 0) return -R_TIMEOUT;
      continue;
    }
    return -R_ERR;
  }
}

/* A recv that times out (or is cancelled) mid-message parks the part it
   took in its process, under an id the shared state records; the next
   recv of this process goes on with it.  A reader of another process
   finds an id that is not its own: that message is lost for it (its
   other chunks are then skipped as one lost message), and the process
   that parked it drops its part when it finds the id gone. */
static uint64_t park_counter;

static void park(pt_pipe *p, pt_frame_asm *a) {
  uint64_t n = __atomic_add_fetch(&park_counter, 1, __ATOMIC_RELAXED);
  pt_buf_free(&p->park);
  p->park = a->msg;
  p->park_total = a->total;
  p->park_id = (uint64_t)(uint32_t)getpid() << 32 | (uint32_t)n;
  p->shm->parked = p->park_id;
  pt_buf_init(&a->msg);
  a->active = 0;
}

/* Start assembling: with this process's parked part, if it is still the
   one the pipe waits to complete (rlock held). */
static void unpark(pt_pipe *p, pt_frame_asm *a) {
  pipe_shm *s = p->shm;
  if (s->parked && s->parked == p->park_id) {
    pt_buf_free(&a->msg);
    a->msg = p->park;
    a->total = p->park_total;
    a->active = 1;
    pt_buf_init(&p->park);
  } else if (p->park_id) {
    pt_buf_free(&p->park);
  }
  s->parked = 0;
  p->park_id = 0;
}

/* Take one message out (rlock held).  On R_MSG, out holds it.  may_park:
   a timeout or cancellation mid-message parks the part taken. */
static int take_message(pt_pipe *p, int fd, double deadline, pt_buf *out,
                        int may_park) {
  pipe_shm *s = p->shm;
  pt_frame_asm a;
  int result;
  pt_frame_asm_init(&a);
  a.msg = *out;                 /* assemble straight into out */
  a.msg.len = 0;
  a.orphan = s->orphan;         /* one "lost message" for all its chunks */
  unpark(p, &a);
  if (s->rstart > s->rend || s->rend > RBUF_SIZE) s->rstart = s->rend = 0;
  for (;;) {
    size_t used = 0, avail = s->rend - s->rstart;
    long got;
    int st;
    if (s->resync && avail > 0) {
      const unsigned char *at = (const unsigned char *)s->rbuf + s->rstart;
      pt_frame_hdr h;
      if (avail >= PT_FRAME_HDR ? !pt_frame_get(at, &h) : !pt_frame_prefix(at, avail)) {
        s->rstart += (uint32_t)pt_frame_scan(s->rbuf + s->rstart, avail);
        continue;
      }
      if (avail >= PT_FRAME_HDR) s->resync = 0;
    }
    st = s->resync ? PT_FR_NEED : pt_frame_step(&a, s->rbuf + s->rstart, avail, &used);
    s->rstart += (uint32_t)used;
    if (st == PT_FR_MORE) continue;
    if (st == PT_FR_MSG) {
      result = R_MSG;
      if (a.out != a.msg.data) {            /* one chunk: still in the shared buffer */
        a.msg.len = 0;
        if (pt_buf_add(&a.msg, a.out, a.outlen)) result = R_NOMEM;
      }
      break;
    }
    if (st == PT_FR_LOST) { result = R_LOST; break; }
    if (st == PT_FR_NOMEM) { result = R_NOMEM; break; }
    if (st == PT_FR_CORRUPT) {
      /* say so now; later calls skip to the next valid header */
      s->resync = 1;
      s->rstart++;
      result = R_CORRUPT;
      break;
    }
    got = fill(s, fd, &a, deadline);
    if (got > 0) continue;
    if (got == 0) {                         /* end of stream */
      if (a.active) result = R_LOST;
      else if (s->rend > s->rstart && !s->resync) {
        s->rstart = s->rend;                /* a partial chunk: not a frame */
        result = R_CORRUPT;
      } else {
        s->rstart = s->rend = 0;
        result = R_CLOSED;
      }
      break;
    }
    result = (int)-got;
    if (a.active && may_park && (result == R_TIMEOUT || result == R_CANCEL))
      park(p, &a);
    break;
  }
  if (result != R_MSG) a.msg.len = 0;
  /* a message left half read (cancelled, out of memory): its other chunks
     are skipped by whoever reads next, and reported lost once */
  s->orphan = a.active ? 0 : a.orphan;
  *out = a.msg;                 /* the caller owns the buffer */
  return result;
}

/* The read end closes and nobody else can read (finish_read_close): take
   every whole message still in the pipe and drop the references it
   holds, without waiting.  A part of a message is dropped as bytes: its
   sender, still sending, drops the references itself when its write
   fails. */
static void drain(pt_pipe *p, int fd) {
  pt_buf out;
  int r;
  if (lock_robust(&p->shm->rlock, pt_now()) < 0) return;
  pt_buf_init(&out);
  do {
    r = take_message(p, fd, 0, &out, 0);
    if (r == R_MSG) pt_discard(out.data ? out.data : "", out.len);
  } while (r == R_MSG || r == R_LOST || r == R_CORRUPT);
  pt_buf_free(&out);
  pthread_mutex_unlock(&p->shm->rlock);
}

static int l_recv(lua_State *L) {
  handle *h = check_handle(L, 1);
  double timeout = pt_opttimeout(L, 2);
  double deadline = timeout < 0 ? -1 : pt_now() + timeout;
  pt_pipe *p = h->p;
  pipe_shm *s;
  pt_buf out;
  tls_bufs *t;
  int fd, lk, r, saved, n;
  if (!p) return push_closed(L);
  fd = end_begin(p, 1);
  if (fd < 0) return push_closed(L);
  s = p->shm;
  lk = lock_robust(&s->rlock, deadline);
  if (lk < 0) {
    saved = errno;
    end_done(p, 1);
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
  r = take_message(p, fd, deadline, &out, 1);
  saved = errno;
  pthread_mutex_unlock(&s->rlock);
  end_done(p, 1);
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
  handle *h = (handle *)pt_testudata(L, idx, PIPE_MT);
  *pipe = h ? h->p : NULL;
  return h != NULL;
}

int pt_pipe_watch(void *pipe) { return end_begin((pt_pipe *)pipe, 1); }

void pt_pipe_unwatch(void *pipe) { end_done((pt_pipe *)pipe, 1); }

int pt_pipe_buffered(void *pipe) {
  pipe_shm *s = ((pt_pipe *)pipe)->shm;
  return __atomic_load_n(&s->rend, __ATOMIC_ACQUIRE) != __atomic_load_n(&s->rstart, __ATOMIC_ACQUIRE);
}

/* ---- crossing the codec: by reference ---------------------------------------- */

static const char *pipe_encode(lua_State *L, int idx, pt_ref *ref) {
  handle *h = (handle *)pt_testudata(L, idx, PIPE_MT);
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

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void watch_forks(void) { (void)pthread_atfork(NULL, count_fork, NULL); }

void pt_open_pipe(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"send", l_send}, {"recv", l_recv}, {"close", l_close},
    {"close_write", l_close_write}, {"close_read", l_close_read},
    {"fds", l_fds}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"pipe", l_pipe}, {NULL, NULL}};
  pt_atfork_child(pipe_after_fork);
  pthread_once(&fork_once, watch_forks);
  if (luaL_newmetatable(L, PIPE_MT)) {
    lua_newtable(L);
    pt_setfuncs(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, PIPE_MT);
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  pt_setfuncs(L, fns);
}
