/* pipe_end.c - using a pipe's ends: a call marks the end it uses busy, and
 * close() of a busy end leaves the closing to the last call using it.
 * The read end's last close drains what nobody can read any more.  See
 * pipe.h. */
#include "pipe.h"

#include <sys/eventfd.h>
#include <unistd.h>

void pt_pipe_close_fd(int *fd) {
  if (*fd >= 0) { pt_close(*fd); *fd = -1; }
}

/* Forks this process made (pthread_atfork): a pipe made before one may
   have a reader in the child. */
static unsigned fork_count;
static void count_fork(void) { __atomic_add_fetch(&fork_count, 1, __ATOMIC_RELAXED); }

unsigned pt_pipe_forks(void) { return __atomic_load_n(&fork_count, __ATOMIC_RELAXED); }

/* getpid() is a system call (glibc keeps no copy): kept here, forgotten
   in a new child (watch_forks). */
static pid_t own_pid;
PT_AFTER_FORK static void forget_pid(void) { own_pid = 0; }

pid_t pt_pipe_pid(void) {
  pid_t p = __atomic_load_n(&own_pid, __ATOMIC_RELAXED);
  if (!p) __atomic_store_n(&own_pid, p = getpid(), __ATOMIC_RELAXED);
  return p;
}

/* Does this process hold the only read end?  It made the pipe and has not
   forked since (a pipe only reaches another process through fork). */
static int sole_reader(const pt_pipe *p) {
  return p->born == getpid() && p->forks == pt_pipe_forks();
}

/* The read end is closing for good in this process (fd: taken out of p,
   no call uses it): when nobody else can read the pipe, the messages left
   in it are dropped with the references they hold.  Never under p->mu:
   dropping a reference may take it. */
void pt_pipe_finish_read_close(pt_pipe *p, int fd) {
  if (fd < 0) return;
  if (sole_reader(p)) pt_pipe_drain(p, fd);
  pt_close(fd);
}

/* ---- using an end: close() waits for the calls in progress -------------- */

/* Under p->mu: the read end is no longer used; if its close was asked,
   take its fd out for pt_pipe_finish_read_close.  Returns that fd or -1. */
static int read_end_idle(pt_pipe *p) {
  int fd = -1;
  if (p->rbusy == 0 && p->rclosing) {
    fd = p->rfd; p->rfd = -1; p->rclosing = 0;
    pt_pipe_close_fd(&p->close_ev);       /* no sender holds the read end now */
  }
  return fd;
}

/* Start a call on the read (r=1) or write end; -1 when that end is closed. */
int pt_pipe_end_begin(pt_pipe *p, int r) {
  int fd;
  pthread_mutex_lock(&p->mu);
  fd = r ? (p->rclosing ? -1 : p->rfd) : (p->wclosing ? -1 : p->wfd);
  if (fd >= 0) { if (r) p->rbusy++; else p->wbusy++; }
  pthread_mutex_unlock(&p->mu);
  return fd;
}

/* End a call on the read end (r), the write end (w), or both (a send
   that kept the read end busy): one lock for both. */
static void ends_done(pt_pipe *p, int r, int w) {
  int rfd = -1;
  pthread_mutex_lock(&p->mu);
  if (r) {
    p->rbusy--;
    rfd = read_end_idle(p);
  }
  if (w && --p->wbusy == 0 && p->wclosing) { pt_pipe_close_fd(&p->wfd); p->wclosing = 0; }
  pthread_mutex_unlock(&p->mu);
  pt_pipe_finish_read_close(p, rfd);
}

void pt_pipe_end_done(pt_pipe *p, int r) { ends_done(p, r, !r); }

/* Has this process closed (or begun to close) the only read end?  Then
   no reader is left, even while its close still drains the pipe -- a send
   that went in now would feed that drain (and count as delivered).  Under
   p->mu. */
static int no_reader_left(const pt_pipe *p) {
  return (p->rfd < 0 || p->rclosing) && sole_reader(p);
}

/* A send uses the write end (from here), and the read end too when this
   process holds it (pt_pipe_send_reader, once the send holds the write
   lock: see pipe_write.c). */
int pt_pipe_send_begin(pt_pipe *p) {
  int fd;
  pthread_mutex_lock(&p->mu);
  fd = p->wclosing ? -1 : p->wfd;
  if (fd >= 0 && no_reader_left(p)) fd = -1;
  if (fd >= 0) p->wbusy++;
  pthread_mutex_unlock(&p->mu);
  return fd;
}

/* A send that holds the write lock keeps the read end of this process
   busy when it is open: 1 when it does, 0 when it is not open here, -1
   when no reader is left (as pt_pipe_send_begin).  Only the one sender
   holding the write lock pins the read end: senders queued for the lock
   do not, so a close_read from another thread that releases the holder
   (wait_room) closes the end at once, and the OS answers every sender. */
int pt_pipe_send_reader(pt_pipe *p) {
  int r;
  pthread_mutex_lock(&p->mu);
  r = no_reader_left(p) ? -1 : p->rfd >= 0 && !p->rclosing;
  if (r > 0) p->rbusy++;
  pthread_mutex_unlock(&p->mu);
  return r;
}

void pt_pipe_send_done(pt_pipe *p, int reader) { ends_done(p, reader, 1); }

/* Close one end; while calls use it, the last of them closes it.  A
   sender that keeps the read end busy (pipe_write.c) lets it go when it sees
   rclosing, so that a close_read here wakes it as it would in another
   process. */
void pt_pipe_end_close(pt_pipe *p, int r) {
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
    if (p->wbusy) p->wclosing = p->wfd >= 0; else pt_pipe_close_fd(&p->wfd);
  }
  pthread_mutex_unlock(&p->mu);
  pt_pipe_finish_read_close(p, rfd);
}

/* For a sender holding the read end busy: -2 when a close of it has been
   asked, else the eventfd pt_pipe_end_close writes when one is (made here on
   first need), or -1 when none can be made. */
int pt_pipe_close_event(pt_pipe *p) {
  int fd;
  pthread_mutex_lock(&p->mu);
  if (!p->rclosing && p->close_ev < 0) p->close_ev = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  fd = p->rclosing ? -2 : p->close_ev;
  pthread_mutex_unlock(&p->mu);
  return fd;
}

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void watch_forks(void) { (void)pthread_atfork(NULL, count_fork, forget_pid); }
void pt_pipe_watch_forks(void) { pthread_once(&fork_once, watch_forks); }
