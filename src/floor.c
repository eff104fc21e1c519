/* floor.c - the plain-C floors the lab measures beside procthread's own
 * mechanisms (lua/procthread/lab/communication.lua), so that a report can
 * tell what the OS costs from what the library adds:
 *
 *   pt._floor_pipe(size, count, kind)   a size-byte message written into
 *       one pipe and read out by an echo partner, which writes it back
 *       through a second pipe: seconds per round trip (mean over count).
 *   pt._floor_shm(size, count, kind)    memcpy into MAP_SHARED memory and a
 *       futex wake; the partner's futex wait and memcpy out, then the same
 *       way back: seconds per round trip.
 *   (Both after one untimed round trip, which faults the buffers' pages in.)
 *
 * kind is "thread" (the partner is a pthread) or "process" (a forked child
 * that only copies and waits, and leaves with _exit).  A waiter spins
 * before it sleeps with the policy of the procthread mechanism it is the
 * floor of (wait.c's spins, so the two cannot drift apart): the pipe
 * reader yields the CPU at each look for at most 20 us (pt_yield_until),
 * the shm reader pauses for at most 10 us (pt_spin_until, as pt.wait and
 * channels do); neither spins on one CPU.  A writer wakes only a sleeping
 * reader (as wait.c does): the floor is what a careful C program pays.
 * Nothing here hangs: a waiter sleeps in slices and checks that its
 * partner lives; a child whose parent died leaves.  OS failures return
 * nil, "<op>: <strerror>", errno. */
#include "pt.h"
#include "wait.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_SIZE ((lua_Integer)1 << 30)
#define MAX_COUNT ((lua_Integer)1 << 30)
#define SLICE 0.1               /* a sleep's length before a liveness check */
#define PIPE_SPIN_S 20e-6       /* the pipe reader's longest spin (pipe_read.c's) */

typedef struct side {           /* one direction of the shm floor */
  uint32_t seq;                 /* futex word: bumped by each message */
  uint32_t sleeping;            /* 1: the reader may sleep on seq */
} side;

typedef struct shm_area {
  side to, back;
  uint32_t stop;                /* the parent says: no more messages */
} shm_area;

typedef struct run {
  size_t size;
  int shm;                      /* 1: the shm floor, 0: the pipe floor */
  int process;                  /* 1: the partner is a forked child */
  pid_t pid, parent;            /* the child; its parent */
  pthread_t thread;
  int to[2], back[2];           /* pipes: parent -> partner -> parent */
  shm_area *area;               /* shm: the header, then two buffers */
  char *to_buf, *back_buf;
  char *mine, *theirs;          /* private copies: parent's, partner's */
} run;

/* ---- the two mechanisms ----------------------------------------------------- */

static int has_data(void *fd) {
  int avail = 0;
  return ioctl(*(int *)fd, FIONREAD, &avail) != 0 || avail > 0;
}

typedef struct word_seen { const uint32_t *word; uint32_t seen; } word_seen;

static int word_moved(void *arg) {
  const word_seen *w = arg;
  return __atomic_load_n(w->word, __ATOMIC_ACQUIRE) != w->seen;
}

static int full_io(int fd, char *p, size_t n, int writing) {
  while (n > 0) {
    ssize_t k;
    if (!writing) pt_yield_until(has_data, &fd, PIPE_SPIN_S, PT_FOREVER);
    k = writing ? write(fd, p, n) : read(fd, p, n);
    if (k == 0) { errno = EPIPE; return -1; }
    if (k < 0) { if (errno == EINTR) continue; return -1; }
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

static void publish(side *s) {
  __atomic_add_fetch(&s->seq, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&s->sleeping, __ATOMIC_SEQ_CST)) pt_futex_wake(&s->seq, 1);
}

/* 1 while the other side of r can still answer. */
static int partner_alive(run *r, int parent_side) {
  int st;
  if (!r->process) return 1;
  if (!parent_side) return getppid() == r->parent;
  return waitpid(r->pid, &st, WNOHANG) == 0 || (errno == EINTR);
}

/* Wait until s->seq leaves `seen`: 0, or -1 with errno when the partner
   died (ESRCH) or the wait failed. */
static int await(run *r, side *s, uint32_t seen, int parent_side) {
  word_seen w;
  w.word = &s->seq;
  w.seen = seen;
  pt_spin_until(word_moved, &w);
  while (__atomic_load_n(&s->seq, __ATOMIC_SEQ_CST) == seen) {
    int e;
    __atomic_store_n(&s->sleeping, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->seq, __ATOMIC_SEQ_CST) != seen) break;
    e = pt_futex_wait(&s->seq, seen, pt_clock_now() + SLICE, NULL);
    if (e == PT_ERR) return -1;
    if (e == PT_TIMEOUT && !partner_alive(r, parent_side)) { errno = ESRCH; return -1; }
  }
  __atomic_store_n(&s->sleeping, 0, __ATOMIC_RELAXED);
  return 0;
}

/* One message of r->size bytes from src through the mechanism, towards
   the partner or back to the parent. */
static int pass(run *r, int to_partner, const char *src) {
  if (!r->shm) return full_io(to_partner ? r->to[1] : r->back[1], (char *)src, r->size, 1);
  memcpy(to_partner ? r->to_buf : r->back_buf, src, r->size);
  publish(to_partner ? &r->area->to : &r->area->back);
  return 0;
}

/* Receive one message into dst (the other half of pass). */
static int take(run *r, int from_parent, char *dst, uint32_t *seen) {
  if (!r->shm) return full_io(from_parent ? r->to[0] : r->back[0], dst, r->size, 0);
  {
    side *s = from_parent ? &r->area->to : &r->area->back;
    if (await(r, s, *seen, !from_parent) != 0) return -1;
    *seen = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
    if (from_parent && __atomic_load_n(&r->area->stop, __ATOMIC_ACQUIRE)) { errno = 0; return -1; }
    memcpy(dst, from_parent ? r->to_buf : r->back_buf, r->size);
    return 0;
  }
}

/* ---- the partner: echo until told to stop -------------------------------------- */

static void echo(run *r) {
  uint32_t seen = 0;
  while (take(r, 1, r->theirs, &seen) == 0)
    if (pass(r, 0, r->theirs) != 0) break;
}

static void *echo_thread(void *arg) {
  echo(arg);
  return NULL;
}

static void stop_partner(run *r) {
  if (r->shm) {
    __atomic_store_n(&r->area->stop, 1, __ATOMIC_RELEASE);
    publish(&r->area->to);
  } else if (r->to[1] >= 0) {
    pt_close(r->to[1]);          /* the partner reads end-of-file */
    r->to[1] = -1;
  }
  if (r->process) {
    int st;
    while (waitpid(r->pid, &st, 0) < 0 && errno == EINTR) {}
  } else {
    pthread_join(r->thread, NULL);
  }
}

/* Start the partner: 0, or an errno with *op naming the call. */
static int start_partner(run *r, const char **op) {
  sigset_t all, old;
  int e = 0;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);     /* the partner takes no signals */
  if (r->process) {
    r->parent = getpid();
    r->pid = fork();
    if (r->pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      pt_close(r->to[1]);        /* the parent's ends: end-of-file when it closes */
      pt_close(r->back[0]);
      if (getppid() == r->parent) echo(r);
      _exit(0);
    }
    if (r->pid < 0) { e = errno; *op = "fork"; }
  } else {
    e = pthread_create(&r->thread, NULL, echo_thread, r);
    if (e) *op = "pthread_create";
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return e;
}

/* ---- setting up and taking down --------------------------------------------- */

static void release(run *r) {
  int i;
  for (i = 0; i < 2; i++) { pt_close(r->to[i]); pt_close(r->back[i]); }
  if (r->area) munmap(r->area, sizeof(shm_area) + 2 * r->size);
  free(r->mine);
  free(r->theirs);
}

/* The resources of r: 0, or an errno with *op naming the call. */
static int prepare(run *r, const char **op) {
  r->mine = malloc(r->size);
  r->theirs = malloc(r->size);
  if (!r->mine || !r->theirs) { *op = "malloc"; return ENOMEM; }
  memset(r->mine, 'x', r->size);
  if (r->shm) {
    void *p = mmap(NULL, sizeof(shm_area) + 2 * r->size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { *op = "mmap"; return errno; }
    r->area = p;                 /* zero-filled: every word starts at 0 */
    r->to_buf = (char *)(r->area + 1);
    r->back_buf = r->to_buf + r->size;
    return 0;
  }
  if (pipe(r->to) || pipe(r->back)) { *op = "pipe"; return errno; }
  return 0;
}

/* count round trips, timed: the seconds they took, or -1 with errno. */
static double round_trips(run *r, lua_Integer count) {
  uint32_t seen = 0;
  double t0 = pt_clock_now();
  lua_Integer i;
  for (i = 0; i < count; i++)
    if (pass(r, 1, r->mine) != 0 || take(r, 0, r->mine, &seen) != 0) return -1;
  return pt_clock_now() - t0;
}

/* The child's pipe ends are not the parent's: close them here, so that a
   child that dies shows as end-of-file or EPIPE. */
static void close_partner_ends(run *r) {
  if (r->shm || !r->process) return;
  pt_close(r->to[0]);
  pt_close(r->back[1]);
  r->to[0] = r->back[1] = -1;
}

static int floor_run(lua_State *L, int shm, const char *fname) {
  static const char *const kinds[] = {"thread", "process", NULL};
  lua_Integer size = luaL_checkinteger(L, 1), count = luaL_checkinteger(L, 2);
  run r;
  const char *op = NULL;
  double t;
  int e;
  sigset_t pipeset, old;
  memset(&r, 0, sizeof r);
  r.to[0] = r.to[1] = r.back[0] = r.back[1] = -1;
  r.process = luaL_checkoption(L, 3, NULL, kinds);
  luaL_argcheck(L, size >= 1 && size <= MAX_SIZE, 1, lua_pushfstring(L, "%s: size must be 1 to 2^30 bytes", fname));
  luaL_argcheck(L, count >= 1 && count <= MAX_COUNT, 2, lua_pushfstring(L, "%s: count must be 1 to 2^30", fname));
  r.size = (size_t)size;
  r.shm = shm;
  if ((e = prepare(&r, &op)) != 0 || (e = start_partner(&r, &op)) != 0) {
    release(&r);
    return pt_push_oserror(L, op, e);
  }
  close_partner_ends(&r);
  sigemptyset(&pipeset);
  sigaddset(&pipeset, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipeset, &old);   /* a dead reader: EPIPE, no signal */
  t = round_trips(&r, 1);        /* untimed: the pages of every buffer faulted in */
  if (t >= 0) t = round_trips(&r, count);
  e = errno;
  stop_partner(&r);
  if (!sigismember(&old, SIGPIPE)) {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipeset, NULL, &zero) > 0) {}   /* one our writes raised */
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  release(&r);
  if (t < 0) return pt_push_oserror(L, shm ? "futex" : "pipe", e ? e : ESRCH);
  lua_pushnumber(L, t / (double)count);
  return 1;
}

static int l_floor_pipe(lua_State *L) { return floor_run(L, 0, "_floor_pipe"); }
static int l_floor_shm(lua_State *L) { return floor_run(L, 1, "_floor_shm"); }

void pt_open_floor(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"_floor_pipe", l_floor_pipe},
    {"_floor_shm", l_floor_shm},
    {NULL, NULL}};
  pt_setfuncs(L, fns);
}
