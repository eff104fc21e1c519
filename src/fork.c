/* fork.c - what a fork and a worker process's exit need: the functions
 * every concern registers to forget the parent's state in a new child,
 * the ones that give back what a leaving worker process holds, and the
 * count of running thread workers (none come along into a child). */
#include "pt.h"
#include "rawsys.h"

#include <pthread.h>
#include <stdio.h>
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
#include <sys/single_threaded.h>
#endif
#include <unistd.h>

/* getpid() is a system call each time (glibc keeps no cache): the
   worker handles ask it at every method.  Cached, and set anew in the
   child of every fork() (pthread_atfork: ours and the host's alike), which
   also counts the forks of this process's line (caches of a thread's id
   compare it). */
static pid_t my_pid;                       /* atomic; 0: not yet known */
static unsigned fork_gen;                  /* atomic */
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

/* hot: the code of a new child sits together (process.c, PT_CHILD_PATH) */
static void set_pid(void) {    /* no libc: rawsys.h */
  __atomic_store_n(&my_pid, (pid_t)pt_rawsys(SYS_getpid, 0, 0, 0, 0), __ATOMIC_RELAXED);
}
__attribute__((hot)) static void forked(void) {
  set_pid();
  __atomic_add_fetch(&fork_gen, 1, __ATOMIC_RELAXED);
  /* no thread comes along into any child (a bare fork()'s too: a copy of
     a worker process leaving would wait a second for the parent's) */
  if (__atomic_load_n(&pt_live_threads, __ATOMIC_RELAXED) != 0)
    __atomic_store_n(&pt_live_threads, 0, __ATOMIC_SEQ_CST);
}
static void watch_forks(void) { pthread_atfork(NULL, NULL, forked); }

__attribute__((hot)) pid_t pt_pid(void) {
  pid_t p = __atomic_load_n(&my_pid, __ATOMIC_RELAXED);
  if (p) return p;
  pthread_once(&pid_once, watch_forks);   /* before the first fork that counts */
  set_pid();
  return getpid();
}

unsigned pt_fork_generation(void) {
  pthread_once(&pid_once, watch_forks);
  return __atomic_load_n(&fork_gen, __ATOMIC_RELAXED);
}

/* Lock-free, so that a fork taken while another thread registers can
   never leave the child with a held lock. */
static void (*volatile atfork_fns[16])(void);
static void (*volatile exit_fns[16])(void);

static void add_fn(void (*volatile *fns)(void), void (*fn)(void)) {
  int i;
  for (i = 0; i < 16; i++) {
    void (*cur)(void) = __atomic_load_n(&fns[i], __ATOMIC_ACQUIRE);
    if (cur == fn) return;
    if (cur == NULL) {
      void (*expected)(void) = NULL;
      if (__atomic_compare_exchange_n(&fns[i], &expected, fn, 0,
                                      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return;
      if (expected == fn) return;
    }
  }
}

__attribute__((hot)) static void run_fns(void (*volatile *fns)(void)) {
  int i;
  for (i = 0; i < 16; i++) {
    void (*fn)(void) = __atomic_load_n(&fns[i], __ATOMIC_ACQUIRE);
    if (!fn) break;
    fn();
  }
}

int pt_live_threads;
int pt_live_waiters;

void pt_atfork_child(void (*fn)(void)) { add_fn(atfork_fns, fn); }
__attribute__((hot)) void pt_after_fork_child(void) {
  __atomic_store_n(&pt_live_threads, 0, __ATOMIC_SEQ_CST);   /* none came along */
  run_fns(atfork_fns);
}
void pt_on_child_exit(void (*fn)(void)) { add_fn(exit_fns, fn); }
/* Has any stream output not yet written?  fflush(NULL) writes the page
   of the lock on libc's list of streams (one more copy-on-write fault in
   the parent of a child that runs, and in a child also libc's code
   there): when nothing is buffered it is left out.  glibc's list (libio:
   _IO_list_all, exported, in no header since 2.28) is read as fflush
   reads it, but without its lock: only where no other thread can open
   or close a stream meanwhile.  A wide stream (_mode > 0) keeps its
   output elsewhere: then flush, as everywhere but glibc. */
#if defined(__GLIBC__)
extern FILE *_IO_list_all;
PT_AFTER_FORK static int stdio_pending(void) {
  FILE *f;
  for (f = _IO_list_all; f; f = f->_chain)
    if (f->_mode > 0 || f->_IO_write_ptr > f->_IO_write_base) return 1;
  return 0;
}
#else
static int stdio_pending(void) { return 1; }
#endif

/* A process that has never had a second thread (glibc 2.32's word): no
   thread can touch the list of streams. */
static int single_threaded(void) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  return __libc_single_threaded;
#else
  return 0;
#endif
}

void pt_flush_stdio(void) {
  if (!single_threaded() || stdio_pending()) fflush(NULL);
}

__attribute__((hot)) void pt_child_exit(int code) {
  /* Thread workers of this process that still run may use what the exit
     functions release (shared-memory references): then leak, never free
     under a running thread. */
  if (__atomic_load_n(&pt_live_threads, __ATOMIC_SEQ_CST) == 0) {
    run_fns(exit_fns);
    /* no thread worker, and the helper threads use no stdio: nothing
       opens or closes a stream while the list is read */
    if (stdio_pending()) fflush(NULL);
  } else {
    fflush(NULL);            /* a thread may be writing: libc's walk, locked */
  }
  _exit(code);
}
