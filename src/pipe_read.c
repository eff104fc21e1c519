/* pipe_read.c - a pipe's shared locks, and taking messages out of it: the
 * reader's side of the frame state machine (frame.c), the read-ahead
 * buffer in shared memory, parking a part taken before a timeout, and
 * draining a pipe nobody can read any more.  See pipe.h. */
#include "pipe.h"
#include "wait.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define STALL_CHECK 0.1        /* no pidfd (see stall_watch): look this often */

/* ---- robust shared locks ------------------------------------------------- */

/* Take m before deadline (<0: none), staying cancellable and (main
   thread) interruptible while it waits: a futex wait on the lock's word
   next to the cancel flag and the interrupt word (wait.c), no timer.
   LK_DIED: taken, and the previous holder died with it (now consistent
   again).  LK_CANCEL: cancelled, or interrupted (pt_raise_cancelled). */
int pt_pipe_lock(pthread_mutex_t *m, double deadline) {
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

/* Did the sender of the message being assembled stop for good: die
   holding the write lock, or give up mid-message (cancelled, an error)?
   Then the rest never comes.  A sender that gives up sets wtorn before it
   lets the lock go (read here while it still holds it: see give_up in
   pipe_write.c); the next sender writes an abort chunk first, which the
   reader then skips.  Called with the pipe found empty, so the message
   being assembled is the latest one. */
static int writer_gone(pipe_shm *s) {
  int r = pthread_mutex_trylock(&s->wlock), gone;
  if (r == EOWNERDEAD) {
    pthread_mutex_consistent(&s->wlock);
    __atomic_store_n(&s->wtorn, 1, __ATOMIC_SEQ_CST);
    gone = 1;
  } else {
    gone = __atomic_load_n(&s->wtorn, __ATOMIC_SEQ_CST);
  }
  if (r == 0 || r == EOWNERDEAD) pthread_mutex_unlock(&s->wlock);
  return gone;
}

/* While a reader waits mid-message, a pidfd of the process holding the
   write lock (wholder, set by every sender that takes it) wakes its poll
   when that process ends, so that a sender killed mid-message is noticed
   at once, with no timer.  No pidfd for a sender of this process (it
   cannot die alone), none for a holder that ended already (writer_gone
   tells), and a look every STALL_CHECK only when none can be made
   (Linux < 5.3, no fd left). */
typedef struct stall_watch {
  uint64_t holder;            /* the wholder the pidfd is for, or 0 */
  int pidfd;                  /* -1: none */
  int slice;                  /* no pidfd could be made: look again soon */
} stall_watch;

static void watch_holder(pipe_shm *s, stall_watch *w) {
  uint64_t h = __atomic_load_n(&s->wholder, __ATOMIC_ACQUIRE);
  pid_t pid = (pid_t)(uint32_t)h;
  if (h == w->holder) return;
  if (w->pidfd >= 0) { pt_close(w->pidfd); w->pidfd = -1; }
  w->holder = h;
  w->slice = 0;
  if (h == 0 || pid == getpid()) return;
  w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (w->pidfd < 0 && errno != ESRCH) w->slice = 1;
}

/* Mid-message, the pipe read dry: sleep until more bytes come, the sender
   gives up or dies, or the deadline.  1: bytes to read; or -R_LOST,
   -R_TIMEOUT, -R_CANCEL, -R_ERR. */
static int stall_wait(pipe_shm *s, int fd, double deadline, stall_watch *w) {
  for (;;) {
    struct pollfd p[3];       /* room for pt_poll_wait's cancel fd */
    int n = 1, r, gone;
    double until = deadline;
    watch_holder(s, w);
    gone = writer_gone(s);
    p[0].fd = fd; p[0].events = POLLIN;
    if (w->pidfd >= 0) { p[1].fd = w->pidfd; p[1].events = POLLIN; n = 2; }
    if (gone) {
      until = pt_clock_now();       /* only what the pipe holds already */
    } else if (w->slice) {
      double next = pt_clock_now() + STALL_CHECK;
      if (until < 0 || next < until) until = next;
    }
    r = pt_poll_wait(p, n, until);
    if (r == 0) return 1;
    if (r == 1) { pt_close(w->pidfd); w->pidfd = -1; continue; }   /* it ended */
    if (r == -2) return -R_CANCEL;
    if (r == -1) return -R_ERR;
    if (gone) return -R_LOST;
    if (deadline >= 0 && pt_clock_now() >= deadline) return writer_gone(s) ? -R_LOST : -R_TIMEOUT;
  }
}

/* Before sleeping on an empty pipe, look again for a few microseconds,
   yielding the CPU to any other task (the sender, when it shares this
   CPU): a sender that is running hands its message over without a sleep
   and a wakeup on each side, which cost more than the message itself.
   The look is at the count of bytes written (no system call; a writer
   counts after its write, so wdone may trail rbytes for a moment).  Not
   on one CPU, where only a sleep lets the sender run.  1: there may be
   bytes (read them without waiting), 0: sleep. */
#define SPIN_SECONDS 20e-6

static int written(void *arg) {
  pipe_shm *s = (pipe_shm *)arg;
  return (int64_t)(__atomic_load_n(&s->wdone, __ATOMIC_ACQUIRE) -
                   __atomic_load_n(&s->rbytes, __ATOMIC_RELAXED)) > 0;
}

static int spin_for_data(pipe_shm *s, double deadline) {
  return pt_yield_until(written, s, SPIN_SECONDS, deadline);
}

/* Read what is there without waiting: RWF_NOWAIT, or FIONREAD first
   where the kernel refuses RWF_NOWAIT on a pipe.  EAGAIN: nothing. */
static int nowait_flag = RWF_NOWAIT;  /* 0 once the kernel refused it */

static ssize_t read_nowait(int fd, const struct iovec *v) {
  int avail = 0;
  if (__atomic_load_n(&nowait_flag, __ATOMIC_RELAXED)) {
    ssize_t n = preadv2(fd, v, 1, -1, RWF_NOWAIT);
    if (n >= 0 || (errno != EOPNOTSUPP && errno != EINVAL)) return n;
    __atomic_store_n(&nowait_flag, 0, __ATOMIC_RELAXED);
  }
  if (ioctl(fd, FIONREAD, &avail) != 0) return -1;
  if (avail > 0) return readv(fd, v, 1);
  errno = EAGAIN;
  return -1;
}

/* How many bytes a read may take: as many as the buffer holds, or, once
   the pipe reads exactly (pipe_shm.exact), only the rest of the chunk
   header at rstart, then the rest of its chunk. */
static size_t read_size(pipe_shm *s) {
  size_t room = PT_PIPE_RBUF - s->rend, avail = s->rend - s->rstart, want = PT_FRAME_HDR;
  pt_frame_hdr h;
  if (!__atomic_load_n(&s->exact, __ATOMIC_RELAXED)) return room;
  if (avail < PT_FRAME_HDR) want = PT_FRAME_HDR - avail;
  else if (pt_frame_get((const unsigned char *)s->rbuf + s->rstart, &h) &&
           PT_FRAME_HDR + h.len > avail)
    want = PT_FRAME_HDR + h.len - avail;
  return want < room ? want : room;
}

void pt_pipe_exact(pt_pipe *p) { __atomic_store_n(&p->shm->exact, 1, __ATOMIC_RELAXED); }

/* Read into the shared buffer, counted in rbytes (see pipe.h): TAKE_NOWAIT
   without waiting, TAKE_WAIT blocking, TAKE_INTR blocking in a read that
   Ctrl-C ends (pt_read_interruptible).  >0 bytes, 0 end of stream, -1
   errno, -2 (TAKE_INTR only) not for this thread. */
enum { TAKE_WAIT, TAKE_NOWAIT, TAKE_INTR };

static ssize_t take_bytes(pipe_shm *s, int fd, int how) {
  struct iovec v;
  ssize_t n;
  v.iov_base = s->rbuf + s->rend;
  v.iov_len = read_size(s);
  n = how == TAKE_NOWAIT ? read_nowait(fd, &v)
    : how == TAKE_INTR ? pt_read_interruptible(fd, v.iov_base, v.iov_len)
    : readv(fd, &v, 1);
  if (n > 0) {
    s->rend += (uint32_t)n;
    /* a sender waiting for room for a whole frame (pipe_write.c's
       wait_fit) sets wsleep, then looks at rbytes: one of the two sees
       the other's store */
    __atomic_add_fetch(&s->rbytes, (uint64_t)n, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->wsleep, __ATOMIC_SEQ_CST)) pt_seq_bump_wake(&s->rseq);
  }
  return n;
}

/* Read more bytes into the shared buffer (rlock held).  Returns >0 bytes
   read, 0 end of stream, or -R_TIMEOUT / -R_CANCEL / -R_ERR / -R_LOST. */
static long fill(pipe_shm *s, int fd, pt_frame_asm *a, double deadline,
                 stall_watch *w) {
  pt_ctx *c = pt_self_ctx;
  int waitable = (c && c->cancel_fd >= 0) || pt_interrupt_watched();   /* Ctrl-C */
  ssize_t n;
  int spun = 0, intr = 1;
  if (s->rstart == s->rend) s->rstart = s->rend = 0;
  else if (s->rend > PT_PIPE_RBUF - 2 * PT_FRAME_CHUNK) {    /* compact: room for a chunk */
    memmove(s->rbuf, s->rbuf + s->rstart, s->rend - s->rstart);
    s->rend -= s->rstart;
    s->rstart = 0;
  }
  for (;;) {
    if (!spun) {
      spun = 1;
      if (spin_for_data(s, deadline)) {
        n = take_bytes(s, fd, TAKE_NOWAIT);
        if (n >= 0) return (long)n;
        if (errno != EAGAIN && errno != EINTR) return -R_ERR;
      }
    }
    if (a->active) {
      /* mid-message: the rest follows at the sender's pace, within the
         timeout; but a sender that died or gave up sends nothing more */
      int r = stall_wait(s, fd, deadline, w);
      if (r < 0) return r;
    } else if (deadline < 0 && waitable && intr) {
      /* no timeout, and Ctrl-C the only wake-up: block in read() itself */
      n = take_bytes(s, fd, TAKE_INTR);
      if (n >= 0) return (long)n;
      if (n == -2) { intr = 0; continue; }  /* not here: poll first */
      if (errno == EINTR && pt_interrupted()) return -R_CANCEL;
      if (errno == EINTR) continue;
      if (errno != EAGAIN) return -R_ERR;
      intr = 0;                             /* made non-blocking elsewhere: poll */
      continue;
    } else if (deadline >= 0 || waitable) {
      double left = deadline < 0 ? -1 : deadline - pt_clock_now();
      int r = pt_wait_fd(fd, POLLIN, left < 0 && deadline >= 0 ? 0 : left);
      if (r == -2) return -R_CANCEL;
      if (r == -1) return -R_ERR;
      if (r == 0) return -R_TIMEOUT;
    }
    n = take_bytes(s, fd, TAKE_WAIT);
    if (n >= 0) return (long)n;
    if (errno == EINTR && pt_interrupted()) return -R_CANCEL;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {                  /* made non-blocking elsewhere */
      int r = pt_wait_fd(fd, POLLIN, deadline < 0 ? -1 : deadline - pt_clock_now());
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

/* A message of one chunk, still in the shared buffer, into the message
   buffer; a side chunk's last bytes from its slot (pipe.h: the tag is
   passed, whatever comes of it).  R_MSG, R_LOST (the slot holds another
   tag: not the sender's bytes), R_NOMEM. */
static int take_chunk(pipe_shm *s, pt_frame_asm *a) {
  const pt_pipe_side *slot = a->side ? &s->side[a->side_tag % PT_SIDE_SLOTS] : NULL;
  size_t k = 0;
  int r = R_MSG;
  if (slot) {
    if (__atomic_load_n(&slot->tag, __ATOMIC_ACQUIRE) != a->side_tag ||
        (k = slot->n) > PT_SIDE_MAX)
      r = R_LOST;
  }
  /* memcpy, not pt_buf_add's 64-byte steps: from a buffer this size it is
     about twice as fast here (4099 bytes from odd offsets of the shared
     buffer: 57-99 ns against 109-159) */
  a->msg.len = 0;
  if (r == R_MSG && pt_buf_reserve(&a->msg, a->outlen + k)) r = R_NOMEM;
  if (r == R_MSG) {
    if (a->outlen) memcpy(a->msg.data, a->out, a->outlen);
    if (k) memcpy(a->msg.data + a->outlen, slot->b, k);
    a->msg.len = a->outlen + k;
  }
  if (slot && (int32_t)(a->side_tag - s->rside) > 0)
    __atomic_store_n(&s->rside, a->side_tag, __ATOMIC_RELEASE);   /* after the copy */
  return r;
}

/* Take one message out (rlock held).  On R_MSG, out holds it.  may_park:
   a timeout or cancellation mid-message parks the part taken. */
int pt_pipe_take(pt_pipe *p, int fd, double deadline, pt_buf *out,
                 int may_park) {
  pipe_shm *s = p->shm;
  pt_frame_asm a;
  stall_watch w = {0, -1, 0};
  int result;
  pt_frame_asm_init(&a);
  a.msg = *out;                 /* assemble straight into out */
  a.msg.len = 0;
  a.orphan = s->orphan;         /* one "lost message" for all its chunks */
  unpark(p, &a);
  if (s->rstart > s->rend || s->rend > PT_PIPE_RBUF) s->rstart = s->rend = 0;
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
      result = a.out != a.msg.data ? take_chunk(s, &a) : R_MSG;
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
    got = fill(s, fd, &a, deadline, &w);
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
  if (w.pidfd >= 0) pt_close(w.pidfd);
  return result;
}

/* The read end closes and nobody else can read (pt_pipe_finish_read_close): take
   every whole message still in the pipe and drop the references it
   holds, without waiting.  A part of a message is dropped as bytes: its
   sender, still sending, drops the references itself when its write
   fails. */
void pt_pipe_drain(pt_pipe *p, int fd) {
  pt_buf out;
  int r;
  if (pt_pipe_lock(&p->shm->rlock, pt_clock_now()) < 0) return;
  pt_buf_init(&out);
  do {
    r = pt_pipe_take(p, fd, 0, &out, 0);
    if (r == R_MSG) pt_discard(out.data ? out.data : "", out.len);
  } while (r == R_MSG || r == R_LOST || r == R_CORRUPT);
  pt_buf_free(&out);
  pthread_mutex_unlock(&p->shm->rlock);
}
