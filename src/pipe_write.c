/* pipe_write.c - sending a message into a pipe: one chunk for a message
 * of up to two pages when the pipe has room for it, else chunks of at most
 * PIPE_BUF bytes (frame.h), several in one writev when the pipe has room,
 * waiting for room as a cancellation point (only when the byte counts say
 * the write might block), an abort chunk after a sender that stopped
 * mid-message.  See pipe.h.
 *
 * SIGPIPE: the sender blocks it in its own thread around its writes and
 * consumes the one its EPIPE raised; the disposition is never changed. */
#include "pipe.h"
#include "wait.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CLOSE_SLICE 0.05       /* without an eventfd (EMFILE): see wait_room */


/* A send in progress: its pipe and write fd, whether it keeps the read
   end of this process busy (then the pipe has a reader: no EPIPE, no
   SIGPIPE), and else the SIGPIPE mask it set. */
typedef struct sender {
  pt_pipe *p;
  int fd;
  int reader;
  int masked, blocked, was_pending;
  int epipe;                  /* a write got EPIPE (raising SIGPIPE) */
  sigset_t old;
  pt_buf *b;                  /* the message's buffer */
  const char *tail;           /* the message's last tlen bytes, not yet in b */
  size_t tlen;
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
  if ((r == WR_CLOSED || sd->epipe) && !sd->was_pending) {
    /* consume the SIGPIPE our write raised (thread-directed, pending now) */
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipeset, NULL, &zero) < 0 && errno == EINTR) {}
  }
  if (!sd->blocked) pthread_sigmask(SIG_SETMASK, &sd->old, NULL);
  sd->masked = 0;
}

/* Wait for room.  A sender keeping the read end busy also waits for a
   close of that end asked by another thread (an eventfd pt_pipe_end_close writes):
   it lets the end go (and the close happens), guards against SIGPIPE and
   goes on as any other sender, which the OS answers with EPIPE when no
   reader is left.  1 room, or WR_*. */
static int wait_room(sender *sd) {
  for (;;) {
    struct pollfd p[3];
    int n = 0, ev = -1, r;
    p[n].fd = sd->fd; p[n++].events = POLLOUT;
    if (sd->reader && (ev = pt_pipe_close_event(sd->p)) >= 0) { p[n].fd = ev; p[n++].events = POLLIN; }
    if (ev == -2) {
      sd->reader = 0;
      sigpipe_guard(sd);
      pt_pipe_end_done(sd->p, 1);
      continue;
    }
    r = pt_poll_wait(p, n, sd->reader && ev < 0 ? pt_clock_now() + CLOSE_SLICE : -1);
    if (r == -2) return WR_CANCEL;
    if (r == -1) return WR_ERR;
    if (r == 0) return 1;
  }
}

/* Write without waiting for room: all of it or nothing (EAGAIN) when
   it is at most PIPE_BUF bytes.  RWF_NOWAIT where the kernel takes it on a
   pipe, else O_NONBLOCK for this write (the write end's flags are the
   writers' alone, and the write lock holds the others off). */
static int nowait_flag = RWF_NOWAIT;  /* 0 once the kernel refused it */

static ssize_t writev_nowait(int fd, const struct iovec *v, int n) {
  ssize_t w;
  int fl, e;
  if (__atomic_load_n(&nowait_flag, __ATOMIC_RELAXED)) {
    w = pwritev2(fd, v, n, -1, RWF_NOWAIT);
    if (w >= 0 || (errno != EOPNOTSUPP && errno != EINVAL)) return w;
    __atomic_store_n(&nowait_flag, 0, __ATOMIC_RELAXED);
  }
  if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
  w = writev(fd, v, n);
  e = errno;
  (void)fcntl(fd, F_SETFL, fl);
  errno = e;
  return w;
}

/* Every write of a sender: writev of total bytes (without waiting when
   nowait), counted in wbytes before and wdone after (see pipe.h).  The
   bytes written, or -1 errno. */
static ssize_t put(sender *sd, const struct iovec *v, int n, size_t total, int nowait) {
  pipe_shm *s = sd->p->shm;
  ssize_t w;
  s->wbytes += total;
  w = nowait ? writev_nowait(sd->fd, v, n) : writev(sd->fd, v, n);
  s->wbytes -= total - (w > 0 ? (size_t)w : 0);
  if (w > 0) __atomic_add_fetch(&s->wdone, (uint64_t)w, __ATOMIC_RELEASE);
  return w;
}

static ssize_t put1(sender *sd, const void *buf, size_t n, int nowait) {
  struct iovec v;
  v.iov_base = (void *)buf;
  v.iov_len = n;
  return put(sd, &v, 1, n, nowait);
}

/* At most how many bytes the pipe holds: wbytes - rbytes (see pipe.h),
   or UINT64_MAX when bytes were read around the counts. */
static uint64_t in_pipe(pipe_shm *s) {
  uint64_t in = s->wbytes - __atomic_load_n(&s->rbytes, __ATOMIC_ACQUIRE);
  return in > (uint64_t)s->capacity ? UINT64_MAX : in;
}

/* Can n more bytes go in without blocking?  What the pipe holds sits in
   at most 2 page slots per page of bytes plus 2 (a short write after a
   full page takes a slot of its own; the head page may be partly read);
   n bytes take a slot per page plus one. */
static int fits(pipe_shm *s, size_t n) {
  uint64_t in = in_pipe(s), pg = PT_FRAME_CHUNK, slots = (uint64_t)s->capacity / pg;
  return in != UINT64_MAX && 2 * ((in + pg - 1) / pg) + 2 + (n + pg - 1) / pg + 1 <= slots;
}

static void set_torn(pipe_shm *s, int v) { __atomic_store_n(&s->wtorn, v, __ATOMIC_SEQ_CST); }

/* A sender that stops mid-message (cancelled, interrupted, an error) has
   set wtorn, which a reader waiting mid-message reads when it next looks
   (pipe_read.c).  A reader already asleep found the pipe empty, and only
   this sender wrote since: an abort chunk written now, without waiting,
   fits and wakes it (no timer).  When it does not fit, the pipe is full,
   so no reader sleeps: the one that empties it reads wtorn after.  Once
   the abort chunk is in the pipe, wtorn is cleared. */
static void give_up(pipe_shm *s, sender *sd) {
  unsigned char hdr[PT_FRAME_HDR];
  pt_frame_put(hdr, PT_FRAME_ABORT, 0, 0, 0);
  if (put1(sd, hdr, sizeof hdr, 1) == (ssize_t)sizeof hdr) set_torn(s, 0);
  else if (errno == EPIPE) sd->epipe = 1;
}

/* One chunk: one write() of at most PIPE_BUF bytes (atomic).  With a
   cancellation context, or while the read end is held, a write that might
   block waits for room first so the thread stays cancellable (and see
   wait_room): a blocking write would not be.  One the counts say fits
   is just written; one they do not is tried without waiting first (the
   counts err on the safe side), where the kernel can (RWF_NOWAIT). */
static int write_chunk(sender *sd, const char *chunk, size_t len) {
  ssize_t n;
  pt_ctx *c = pt_self_ctx;
  int careful = (c && c->cancel_fd >= 0) || sd->reader;
  for (;;) {
    int nowait = careful && !fits(sd->p->shm, len);
    if (nowait && !__atomic_load_n(&nowait_flag, __ATOMIC_RELAXED)) {
      int r = wait_room(sd);                        /* no RWF_NOWAIT: poll first */
      if (r != 1) return r;
      nowait = 0;
    }
    n = put1(sd, chunk, len, nowait);
    if (n == (ssize_t)len) return WR_OK;
    if (n >= 0) { errno = EIO; return WR_ERR; }     /* cannot happen: atomic */
    if (errno == EINTR && pt_interrupted()) return WR_CANCEL;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {                  /* full, or made non-blocking elsewhere */
      int r = wait_room(sd);
      if (r != 1) return r;
      continue;
    }
    if (errno == EPIPE) { sd->epipe = 1; return WR_CLOSED; }
    return WR_ERR;
  }
}

/* The rest of a write the OS cut short (the counts were wrong: bytes
   written around the framing), written out before anything else. */
static int put_rest(sender *sd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = put1(sd, p, n, 0);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Several chunks in one writev, when the pipe is nearly empty and they
   fill at most half of it: the write cannot block, so it cannot be cut by
   a kill mid-chunk, and the reader is woken once instead of once a chunk.
   (A short count can only come from bytes written around the framing: the
   chunk it stopped in is finished, and the rest written chunk by chunk
   below, still under the lock.)  Returns the bytes of the message
   written, or -1. */
#define BATCH_MAX 8
static long write_batch(sender *sd, char *buf, size_t len,
                        unsigned char (*hdrs)[PT_FRAME_HDR]) {
  pipe_shm *s = sd->p->shm;
  struct iovec iov[2 * BATCH_MAX];
  size_t off = 0, total = 0, room, done, at = 0;
  uint64_t in = in_pipe(s);
  int n = 0, k = 0, i;
  ssize_t w;
  if (s->capacity < 4 * PT_FRAME_CHUNK || in > (uint64_t)s->capacity / 8) return 0;
  /* counted as fits() counts, the pipe's bytes and the batch stay within
     half the pipe, so the write still cannot block */
  room = (size_t)s->capacity / 2 - 2 * (size_t)in;
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
  do w = put(sd, iov, n, total, 0); while (w < 0 && errno == EINTR);
  if (w < 0) return errno == EAGAIN ? 0 : -1;
  if ((size_t)w == total) return (long)off;
  /* cut short: finish the chunk it stopped in, from the byte it stopped at */
  for (done = (size_t)w, off = 0, i = 0; i < k; i++) {
    size_t c = iov[2 * i + 1].iov_len, whole = PT_FRAME_HDR + c;
    if (done < at + whole) {
      size_t got = done - at, hgot = got < PT_FRAME_HDR ? got : PT_FRAME_HDR;
      if (put_rest(sd, (const char *)hdrs[i] + hgot, PT_FRAME_HDR - hgot) ||
          put_rest(sd, buf + PT_FRAME_HDR + off + (got - hgot), c - (got - hgot)))
        return -1;
      return (long)(off + c);
    }
    at += whole;
    off += c;
  }
  return (long)off;
}

#define FIT_SLICE 0.005

/* A wait for room (wait_fit, below) timed out.  Readers read in it and still left no room:
   they are slower than this sender.  None read, and the pipe holds far
   less than the counts say (more than a read in flight can explain): the
   counts are off for good, and a reader may be waiting for this very
   message.  Either way, no more such waits on this pipe.  Else the reader
   is away: none before it reads again. */
static void fit_timed_out(sender *sd, uint64_t read0) {
  pipe_shm *s = sd->p->shm;
  int held = 0;
  if (__atomic_load_n(&s->rbytes, __ATOMIC_ACQUIRE) != read0 ||
      (ioctl(sd->fd, FIONREAD, &held) == 0 && in_pipe(s) > (uint64_t)held + PT_PIPE_RBUF))
    s->wnofit = 1;
  else
    s->wstale = read0 + 1;
}

/* Is such a wait worth it: counts that make sense, a frame that fits the
   empty pipe, and no timeout that said no (read0: rbytes now). */
static int fit_worth_waiting(pipe_shm *s, size_t n, uint64_t read0) {
  uint64_t pg = PT_FRAME_CHUNK;
  return in_pipe(s) != UINT64_MAX && 2 + (n + pg - 1) / pg + 1 <= (uint64_t)s->capacity / pg &&
         read0 + 1 != s->wstale && !s->wnofit;
}

/* The counts say a frame of n bytes does not fit now, though it would fit
   the empty pipe: wait for readers to take bytes out (they bump rseq while
   wsleep is set: see take_bytes in pipe_read.c) for at most FIT_SLICE,
   as a cancellation point and (main thread) interruptible.  A reader
   that stops reading, or is gone, costs one slice, and no sender waits
   again before a reader has read (wstale): meanwhile messages go as
   chunks, which wait for room, or learn that no reader is left, the usual
   way.  Readers that read in a slice and still leave no room, or counts
   that are too large for good (a sender killed between a count and its
   write, bytes read around the framing) turn the wait off for the pipe
   (wnofit: see fit_timed_out).  1 (the caller looks again), WR_CANCEL
   or WR_ERR. */
static int wait_fit(sender *sd, size_t n) {
  pipe_shm *s = sd->p->shm;
  pt_ctx *c = pt_self_ctx;
  uint64_t read0 = __atomic_load_n(&s->rbytes, __ATOMIC_ACQUIRE);
  double until;
  int r = PT_OK;
  if (!fit_worth_waiting(s, n, read0)) return 1;
  if (pt_interrupted()) return WR_CANCEL;
  until = pt_clock_now() + FIT_SLICE;
  while (r == PT_OK) {
    const uint32_t *words[2];
    uint32_t expected[2], iv = 0;
    int k = 1;
    __atomic_store_n(&s->wsleep, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);      /* before fits() reads rbytes */
    expected[0] = __atomic_load_n(&s->rseq, __ATOMIC_SEQ_CST);
    if (fits(s, n)) break;
    words[0] = &s->rseq;
    if ((words[1] = pt_interrupt_word(&iv)) != NULL) { expected[1] = iv; k = 2; }
    r = pt_futex_waitv(words, expected, k, until, c ? c->cancel : NULL, NULL);
    if (r == PT_INTR) r = pt_interrupted() ? PT_CANCELLED : PT_OK;
  }
  __atomic_store_n(&s->wsleep, 0, __ATOMIC_RELAXED);
  if (r == PT_TIMEOUT) fit_timed_out(sd, read0);
  return r == PT_CANCELLED ? WR_CANCEL : r == PT_ERR ? WR_ERR : 1;
}

/* The one write of a chunk the counts say fits (it cannot block): the
   header and the message's first bytes from the buffer, the rest from the
   tail when there is one.  WR_*, or 1 when the write end was made
   non-blocking elsewhere and the pipe is full after all. */
static int put_fitting(sender *sd, char *buf, size_t total) {
  struct iovec v[2];
  size_t inbuf = sd->tail ? sd->b->len : total;   /* header included */
  ssize_t w;
  int r, n = 1;
  v[0].iov_base = buf; v[0].iov_len = inbuf < total ? inbuf : total;
  if (v[0].iov_len < total) {
    v[1].iov_base = (void *)sd->tail; v[1].iov_len = total - v[0].iov_len;
    n = 2;
  }
  while ((w = put(sd, v, n, total, 0)) < 0) {
    if (errno == EINTR && pt_interrupted()) return WR_CANCEL;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return 1;                  /* made non-blocking elsewhere */
    if (errno == EPIPE) { sd->epipe = 1; return WR_CLOSED; }
    return WR_ERR;
  }
  for (r = 0; r < n && (size_t)w >= v[r].iov_len; r++) w -= (ssize_t)v[r].iov_len;
  for (; r < n; r++, w = 0)                         /* cut short: cannot happen */
    if (put_rest(sd, (const char *)v[r].iov_base + w, v[r].iov_len - (size_t)w)) return WR_ERR;
  return WR_OK;
}

/* A message of PT_FRAME_MAXDATA + 1 .. PT_FRAME_MAXDATA + PT_SIDE_MAX
   bytes that fits the pipe, as a side chunk (pipe.h): its last bytes into
   the slot of the next tag, then its first 4080 in one PIPE_BUF write, so
   that it takes one page of the pipe.  A slot's bytes are written before
   its tag, and only once a reader took or passed its last tag (rside).
   WR_*, or 1 when the slot is still in use (the message goes whole). */
static int write_side(sender *sd, char *buf, size_t len) {
  pipe_shm *s = sd->p->shm;
  uint32_t tag = s->wside + 1;
  pt_pipe_side *slot = &s->side[tag % PT_SIDE_SLOTS];
  size_t k = len - PT_FRAME_MAXDATA, inbuf = sd->b->len - PT_FRAME_HDR, at = 0;
  if ((int32_t)(__atomic_load_n(&slot->tag, __ATOMIC_RELAXED) -
                __atomic_load_n(&s->rside, __ATOMIC_ACQUIRE)) > 0) return 1;
  if (!sd->tail) inbuf = len;
  if (inbuf > PT_FRAME_MAXDATA) {                  /* the side bytes: buffer, then tail */
    at = inbuf - PT_FRAME_MAXDATA;
    memcpy(slot->b, buf + PT_FRAME_HDR + PT_FRAME_MAXDATA, at);
  }
  if (at < k) memcpy(slot->b + at, sd->tail + sd->tlen - (k - at), k - at);
  slot->n = (uint32_t)k;
  __atomic_store_n(&slot->tag, tag, __ATOMIC_RELEASE);
  s->wside = tag;
  pt_frame_put((unsigned char *)buf, PT_FRAME_SIDE, PT_FRAME_FIRST | PT_FRAME_LAST,
               PT_FRAME_MAXDATA, tag);
  return put_fitting(sd, buf, PT_FRAME_CHUNK);
}

/* A message of up to two pages as one chunk in one write, when the counts
   say it fits (waiting a little for room: wait_fit): then the write cannot
   block, so no kill can cut it and no cancellation needs a wait first.
   The message's tail, when it is not in the buffer, is the write's second
   part.  A message of a little over a chunk goes as a side chunk when it
   can.  WR_*, or 1 when it does not fit (it then goes as chunks of at
   most PIPE_BUF). */
static int write_whole(sender *sd, char *buf, size_t len) {
  size_t total = PT_FRAME_HDR + len;
  int r;
  if (len <= PT_FRAME_MAXDATA || len > PT_FRAME_ONEMAX) return 1;
  if (!fits(sd->p->shm, total) && (r = wait_fit(sd, total)) != 1) return r;
  if (!fits(sd->p->shm, total)) return 1;
  if (len - PT_FRAME_MAXDATA <= PT_SIDE_MAX && (r = write_side(sd, buf, len)) != 1) return r;
  pt_frame_put((unsigned char *)buf, PT_FRAME_DATA, PT_FRAME_FIRST | PT_FRAME_LAST,
               (uint32_t)len, (uint32_t)len);
  return put_fitting(sd, buf, total);
}

/* The message as chunks needs it in one piece: the tail joins the
   buffer (which may move).  0, or -1 (ENOMEM). */
static int join_tail(sender *sd, char **buf) {
  if (!sd->tail) return 0;
  if (pt_buf_add(sd->b, sd->tail, sd->tlen)) { errno = ENOMEM; return -1; }
  sd->tail = NULL;
  sd->tlen = 0;
  *buf = sd->b->data;
  return 0;
}

/* A pipe that a sender first finds too full for its message grows, once,
   to GROW_TO bytes (F_SETPIPE_SZ; as the system allows, else it stays):
   only pipes that carry a stream pay for the bigger buffer, which then
   takes a whole frame far more often, and wakes each side less often. */
#define GROW_TO (256 * 1024)
static void grow(pipe_shm *s, sender *sd, size_t len) {
  int r;
  if (s->grown || fits(s, PT_FRAME_HDR + len)) return;
  s->grown = 1;
  r = fcntl(sd->fd, F_SETPIPE_SZ, GROW_TO);
  if (r > s->capacity) s->capacity = r;
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
  grow(s, sd, len);
  if (torn_before) __atomic_store_n(&s->wsleep, 0, __ATOMIC_RELAXED);  /* its wait_fit's */
  if (torn_before || s->wtorn) {
    pt_frame_put(hdr, PT_FRAME_ABORT, 0, 0, 0);
    set_torn(s, 1);
    if ((r = write_chunk(sd, (const char *)hdr, PT_FRAME_HDR)) != WR_OK) return r;
    set_torn(s, 0);
  }
  if ((r = write_whole(sd, buf, len)) != 1) return r;
  if (join_tail(sd, &buf)) return WR_ERR;
  if (len > PT_FRAME_MAXDATA) {
    long done = write_batch(sd, buf, len, hdrs);
    if (done < 0) {
      if (errno == EPIPE) { sd->epipe = 1; return WR_CLOSED; }
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
      if (off > 0) set_torn(s, 1);   /* the next sender aborts this message */
      return r;
    }
    off += n;
  } while (off < len);
  return WR_OK;
}

int pt_pipe_write(pt_pipe *p, pt_buf *b, const char *tail, size_t tlen) {
  pipe_shm *s;
  sender sd;
  int lk, r, saved;
  size_t len = b->len - PT_FRAME_HDR + tlen;
  /* every field but old, which sigpipe_guard sets before any use (a
     memset of the whole, its 128-byte sigset_t too, was a sixth of
     pt_pipe_write's own time in a stream of 4 KiB messages) */
  sd.masked = sd.blocked = sd.was_pending = sd.epipe = sd.reader = 0;
  sd.p = p;
  sd.b = b;
  sd.tail = tlen ? tail : NULL;
  sd.tlen = tlen;
  sd.fd = pt_pipe_send_begin(p);
  if (sd.fd < 0) return WR_CLOSED;
  lk = pt_pipe_lock(&p->shm->wlock, -1);
  if (lk < 0) {
    saved = errno;
    pt_pipe_send_done(p, 0);
    errno = saved;
    return lk == LK_CANCEL ? WR_CANCEL : WR_LOCK;
  }
  /* the read end only now: see pt_pipe_send_reader */
  if ((sd.reader = pt_pipe_send_reader(p)) < 0) {
    if (lk == LK_DIED) set_torn(p->shm, 1);       /* the next sender aborts it */
    pthread_mutex_unlock(&p->shm->wlock);
    pt_pipe_send_done(p, 0);
    return WR_CLOSED;
  }
  /* While this process holds the read end open (kept open by marking it
     busy), the pipe has a reader: no EPIPE, no SIGPIPE, no mask to set. */
  if (!sd.reader) sigpipe_guard(&sd);
  s = p->shm;
  s->wseq++;
  __atomic_store_n(&s->wholder, (uint64_t)s->wseq << 32 | (uint32_t)pt_pipe_pid(), __ATOMIC_RELEASE);
  r = write_message(s, &sd, b->data, len, lk == LK_DIED);
  saved = errno;
  if (r != WR_OK && r != WR_CLOSED && s->wtorn) give_up(s, &sd);
  sigpipe_unguard(&sd, r);
  __atomic_store_n(&s->wholder, 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&s->wlock);
  pt_pipe_send_done(p, sd.reader);
  errno = saved;
  return r;
}
